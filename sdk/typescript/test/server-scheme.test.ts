// ChannelVoucherServerScheme's own rules (prices, requirements, the facilitator's contract); its behaviour with
// @x402/express and the real node as facilitator is in node.test.ts.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ChannelVoucherServerScheme, DOMAIN_NAME, DOMAIN_VERSION, SCHEME, toBaseUnits } from "../src/index.js";

const TOKEN = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512";
const CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PROVIDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const kind = (extra?: Record<string, unknown>) => ({ x402Version: 2, scheme: SCHEME, network: "eip155:31337" as const, extra });

describe("ChannelVoucherServerScheme", () => {
  it("converts money to base units, refusing what it cannot represent", () => {
    const table: [string | number, number, string | RegExp][] = [
      ["$0.001", 6, "1000"],
      ["0.001", 6, "1000"],
      [" $1.5 ", 6, "1500000"],
      ["2", 0, "2"],
      [0.25, 6, "250000"],
      ["1.000000000000000001", 18, "1000000000000000001"],
      ["0.0000001", 6, /more than 6 decimals/],
      ["$0", 6, /zero/],
      ["-1", 6, /not an amount/],
      ["1e3", 6, /not an amount/],
      ["$", 6, /not an amount/],
    ];
    for (const [money, decimals, want] of table) {
      if (typeof want === "string") assert.equal(toBaseUnits(money, decimals), want, String(money));
      else assert.throws(() => toBaseUnits(money, decimals), want, String(money));
    }
  });

  it("prices in the configured token, or in base units of an explicit asset", async () => {
    const s = new ChannelVoucherServerScheme({ asset: TOKEN.toLowerCase() as `0x${string}` });
    assert.deepEqual(await s.parsePrice("$0.001", "eip155:31337"), { amount: "1000", asset: TOKEN });
    assert.deepEqual(await s.parsePrice({ amount: "7", asset: TOKEN.toLowerCase() }, "eip155:31337"), { amount: "7", asset: TOKEN });
    await assert.rejects(s.parsePrice({ amount: "0", asset: TOKEN }, "eip155:31337"), /positive integer/);
    await assert.rejects(s.parsePrice("$1", "solana:mainnet" as never), /does not support network/);
    assert.equal(s.getAssetDecimals(TOKEN.toLowerCase()), 6);
    assert.equal(s.getAssetDecimals(CONTRACT), undefined);
  });

  it("builds the requirement's extra from the facilitator's contract and the node's minimums", async () => {
    const s = new ChannelVoucherServerScheme({ asset: TOKEN, tokenName: "Test USD", tokenVersion: "1", minDeposit: 5000n, minChallengePeriod: 7200 });
    const base = { scheme: SCHEME, network: "eip155:31337" as const, amount: "1000", asset: TOKEN.toLowerCase(), payTo: PROVIDER.toLowerCase(), maxTimeoutSeconds: 30, extra: {} };
    const req = await s.enhancePaymentRequirements(base, kind({ contract: CONTRACT.toLowerCase(), domain: { name: DOMAIN_NAME, version: DOMAIN_VERSION } }));
    assert.equal(req.asset, TOKEN, "EIP-55");
    assert.equal(req.payTo, PROVIDER, "EIP-55");
    assert.deepEqual(req.extra, {
      name: "Test USD",
      version: "1",
      contract: CONTRACT,
      domain: { name: DOMAIN_NAME, version: DOMAIN_VERSION },
      minChallengePeriod: 7200,
      minDeposit: "5000",
      pricing: "exact",
    });
  });

  it("refuses a facilitator of another contract or domain, or none", () => {
    const mine = new ChannelVoucherServerScheme({ asset: TOKEN, contract: CONTRACT });
    assert.equal(mine.validateFacilitatorSupport("eip155:31337", kind({ contract: CONTRACT })), undefined);
    assert.match(String(mine.validateFacilitatorSupport("eip155:31337", kind({ contract: PROVIDER }))), /not 0x5FbDB/);
    const any = new ChannelVoucherServerScheme({ asset: TOKEN });
    assert.match(String(any.validateFacilitatorSupport("eip155:31337", kind())), /no channel contract/);
    assert.match(
      String(any.validateFacilitatorSupport("eip155:31337", kind({ contract: CONTRACT, domain: { name: DOMAIN_NAME, version: "1" } }))),
      /domain/,
    );
    assert.throws(() => new ChannelVoucherServerScheme({ asset: "0x1234" as never }), /not an address/);
  });
});
