// A STOCK x402 client (x402Client with only ExactEvmScheme from @x402/evm, through @x402/fetch) pays an `exact`
// route of the real x402-node binary on anvil: the node verifies the EIP-3009 authorisation, settles it from its own
// key before releasing the response, and refuses the same payment twice.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { x402Client } from "@x402/core/client";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { wrapFetchWithPayment } from "@x402/fetch";
import { getAddress, type Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { ROOT, mint, stablecoinAbi, startDevnet, type Devnet } from "./anvil.js";

const NODE = join(ROOT, "target/debug/x402-node");
const PRICE = 1000n;
/** anvil account 0: the provider (it deployed the contracts). */
const PROVIDER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe("a stock ExactEvmScheme client against the node", { timeout: 120_000 }, () => {
  let d: Devnet;
  let dir: string;
  let upstream: Server;
  let node: ChildProcess;
  let url = "";
  let log = "";

  before(async () => {
    if (!existsSync(NODE)) throw new Error(`${NODE} is missing: run \`cargo build -p x402-node\` first`);
    d = await startDevnet();
    dir = await mkdtemp(join(tmpdir(), "x402-exact-"));
    upstream = createServer((req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ forecast: "sunny", path: req.url }));
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
    const api = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    await writeFile(join(dir, "provider.key"), PROVIDER_KEY);
    await writeFile(
      join(dir, "node.toml"),
      [
        `listen = "127.0.0.1:${port}"`,
        `upstream = "${api}"`,
        `data_dir = "${join(dir, "data")}"`,
        `[chain]`,
        `rpc_url = "${d.rpc}"`,
        `contract = "${d.contract}"`,
        `chain_id = 31337`,
        `confirmations = 0`,
        `poll_interval_ms = 100`,
        `[payment]`,
        `asset = "${d.token}"`,
        `schemes = ["channel-voucher", "exact"]`,
        `[provider]`,
        `key_file = "${join(dir, "provider.key")}"`,
        `key_env = "X402_EXACT_TEST_NO_KEY"`,
        `[settlement]`,
        `enabled = false`,
        `[[routes]]`,
        `path = "/weather"`,
        `price = "${PRICE}"`,
      ].join("\n"),
    );
    node = spawn(NODE, ["--config", join(dir, "node.toml"), "run"], { stdio: ["ignore", "ignore", "pipe"] });
    node.stderr!.on("data", (chunk: Buffer) => (log += chunk.toString()));
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${url}/healthz`)).ok) break;
      } catch {
        // not up yet
      }
      if (i > 200 || node.exitCode !== null) throw new Error(`the node did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    node?.kill("SIGTERM");
    if (node && node.exitCode === null) await new Promise((r) => node.once("exit", r));
    upstream?.close();
    await d?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // A stock client: only the official exact scheme. The SDK's spend controls allow only the assets it knows unless
  // told otherwise, so the devnet token is opted in, capped at the price (as a user would for a token of their choice).
  const stock = (account: ReturnType<typeof privateKeyToAccount>) =>
    x402Client.fromConfig({
      schemes: [{ network: "eip155:31337", client: new ExactEvmScheme(account) }],
      spendControls: { allowedAssets: [{ network: "eip155:31337", asset: d.token, maxAmountPerPayment: String(PRICE) }] },
    });

  const balance = (who: Hex) =>
    d.publicClient.readContract({ address: d.token, abi: stablecoinAbi, functionName: "balanceOf", args: [who] });

  it("offers ours first, then exact with the token's EIP-712 domain", async () => {
    const r = await fetch(`${url}/weather`);
    assert.equal(r.status, 402);
    const required = JSON.parse(Buffer.from(r.headers.get("payment-required")!, "base64").toString());
    assert.deepEqual(
      required.accepts.map((a: { scheme: string }) => a.scheme),
      ["channel-voucher", "exact"],
    );
    const exact = required.accepts[1];
    assert.deepEqual(exact.extra, { name: "Test USD", version: "1" });
    assert.equal(exact.asset, getAddress(d.token));
    assert.equal(exact.payTo, d.accounts[0]!.address);
    assert.equal(exact.amount, String(PRICE));
  });

  it("pays with a stock x402Client holding only ExactEvmScheme, and a replay is refused", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    await mint(d, account.address, 10n * PRICE);
    const provider = d.accounts[0]!.address;
    const [payerBefore, providerBefore] = [await balance(account.address), await balance(provider)];

    // What the issue found impossible: nothing but the official exact scheme registered.
    const client = stock(account);
    let sent: string | undefined;
    const recording: typeof fetch = async (input, init) => {
      const request = new Request(input, init);
      sent = request.headers.get("payment-signature") ?? sent;
      return fetch(request);
    };
    const pay = wrapFetchWithPayment(recording, client);
    for (let i = 0; i < 3; i++) {
      const r = await pay(`${url}/weather`);
      assert.equal(r.status, 200, `request ${i}: ${r.status} ${await r.clone().text()}\n${log}`);
      assert.equal((await r.json()).forecast, "sunny");
      const receipt = JSON.parse(Buffer.from(r.headers.get("payment-response")!, "base64").toString());
      assert.equal(receipt.success, true);
      assert.match(receipt.transaction, /^0x[0-9a-f]{64}$/);
      assert.equal(receipt.payer, account.address);
      assert.equal(receipt.amount, String(PRICE));
      const mined = await d.publicClient.getTransactionReceipt({ hash: receipt.transaction });
      assert.equal(mined.status, "success");
    }
    // One on-chain transfer per request, of exactly the price, to the provider.
    assert.equal(await balance(account.address), payerBefore - 3n * PRICE);
    assert.equal(await balance(provider), providerBefore + 3n * PRICE);

    // The last payment header sent again: refused, nothing moves.
    assert.ok(sent);
    const replay = await fetch(`${url}/weather`, { headers: { "payment-signature": sent } });
    assert.equal(replay.status, 402);
    const refused = JSON.parse(Buffer.from(replay.headers.get("payment-required")!, "base64").toString());
    assert.equal(refused.error, "invalid_authorization");
    assert.equal(await balance(provider), providerBefore + 3n * PRICE);
  });

  it("a payer without the funds is refused before anything is served", async () => {
    const poor = privateKeyToAccount(generatePrivateKey());
    const pay = wrapFetchWithPayment(fetch, stock(poor));
    const r = await pay(`${url}/weather`);
    assert.equal(r.status, 402);
    const refused = JSON.parse(Buffer.from(r.headers.get("payment-required")!, "base64").toString());
    assert.equal(refused.error, "insufficient_funds");
  });
});
