// The package's EIP-712 and channel-id encodings against the deployed v2 contract, and a real settle.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { getAddress, keccak256, toHex, zeroAddress, type Hex } from "viem";
import {
  ChannelScheme,
  DOMAIN_NAME,
  DOMAIN_VERSION,
  SCHEME,
  MemoryChannelStore,
  computeChannelId,
  isVoucherSignedBy,
  paymentChannelAbi,
  signVoucher,
  voucherDigest,
  type ChannelParams,
} from "../src/index.js";
import { mint, startDevnet, type Devnet } from "./anvil.js";

describe("against the v2 PaymentChannel on anvil", () => {
  let d: Devnet;
  before(async () => {
    d = await startDevnet();
  });
  after(async () => {
    await d?.stop();
  });

  it("computes channel ids and voucher digests exactly as the contract", async () => {
    const cases: Array<{ params: ChannelParams; nonce: bigint; amount: bigint }> = [
      {
        params: { payer: d.accounts[1]!.address, payee: d.accounts[2]!.address, token: d.token, signer: zeroAddress, challengePeriod: 3600, salt: keccak256(toHex("a")) },
        nonce: 1n,
        amount: 1n,
      },
      {
        params: { payer: d.accounts[3]!.address, payee: d.accounts[2]!.address, token: zeroAddress, signer: d.accounts[4]!.address, challengePeriod: 60, salt: `0x${"ff".repeat(32)}` },
        nonce: (1n << 64n) - 1n,
        amount: (1n << 256n) - 1n,
      },
      {
        params: { payer: d.accounts[1]!.address, payee: d.accounts[2]!.address, token: d.token, signer: zeroAddress, challengePeriod: 4294967295, salt: `0x${"00".repeat(32)}` },
        nonce: 0n,
        amount: 0n,
      },
    ];
    for (const c of cases) {
      const id = await d.publicClient.readContract({ address: d.contract, abi: paymentChannelAbi, functionName: "computeChannelId", args: [c.params] });
      assert.equal(computeChannelId(31337, d.contract, c.params), id);
      const digest = await d.publicClient.readContract({
        address: d.contract,
        abi: paymentChannelAbi,
        functionName: "voucherDigest",
        args: [id, c.nonce, c.amount],
      });
      assert.equal(voucherDigest(31337, d.contract, { channelId: id, nonce: c.nonce, cumulativeAmount: c.amount }), digest);
    }
    // A different chain or contract gives a different digest.
    const v = { channelId: keccak256(toHex("x")), nonce: 1n, cumulativeAmount: 5n };
    assert.notEqual(voucherDigest(1, d.contract, v), voucherDigest(31337, d.contract, v));
    assert.notEqual(voucherDigest(31337, d.token, v), voucherDigest(31337, d.contract, v));
  });

  it("opens a channel, signs vouchers, and the payee settles one on-chain", async () => {
    const payer = d.accounts[1]!;
    const payee = d.accounts[2]!;
    await mint(d, payer.address, 10_000_000n);
    const scheme = new ChannelScheme({
      account: payer,
      publicClient: d.publicClient,
      opener: { kind: "onchain", wallet: d.wallet(payer) as never },
      deposit: { multiple: 100n, cap: 5_000_000n },
      store: new MemoryChannelStore(),
    });
    const req = {
      scheme: SCHEME,
      network: "eip155:31337" as const,
      amount: "1000",
      asset: d.token,
      payTo: payee.address,
      maxTimeoutSeconds: 30,
      extra: { contract: d.contract, domain: { name: DOMAIN_NAME, version: DOMAIN_VERSION }, minChallengePeriod: 3600, minDeposit: "50000", pricing: "exact" },
    };
    let last: { channelId: Hex; nonce: number; cumulativeAmount: string; signature: Hex } | undefined;
    for (let i = 0; i < 5; i++) {
      const r = await scheme.createPaymentPayload(2, req);
      last = r.payload as typeof last;
      // Free the channel's queue as a response would.
      await scheme.schemeHooks.onPaymentResponse!({
        paymentPayload: { x402Version: 2, accepted: req, payload: r.payload },
        requirements: req,
        settleResponse: {
          success: true,
          transaction: "",
          network: "eip155:31337",
          extra: { channelId: last!.channelId, nonce: last!.nonce, cumulativeAmount: last!.cumulativeAmount, charged: "1000", totalCharged: String(1000 * (i + 1)) },
        },
      });
    }
    assert.equal(last!.nonce, 5);
    assert.equal(last!.cumulativeAmount, "5000");
    const record = (await scheme.store.list())[0]!;
    const onchain = await d.publicClient.readContract({ address: d.contract, abi: paymentChannelAbi, functionName: "getChannel", args: [record.channelId] });
    assert.equal(onchain.deposit, 100_000n);
    assert.equal(onchain.status, 1);
    assert.ok(await isVoucherSignedBy(payer.address, 31337, d.contract, { channelId: record.channelId, nonce: 5n, cumulativeAmount: 5000n }, last!.signature));
    assert.ok(!(await isVoucherSignedBy(payee.address, 31337, d.contract, { channelId: record.channelId, nonce: 5n, cumulativeAmount: 5000n }, last!.signature)));

    const before = await d.publicClient.readContract({ address: d.token, abi: [{ type: "function", name: "balanceOf", stateMutability: "view", inputs: [{ type: "address" }], outputs: [{ type: "uint256" }] }], functionName: "balanceOf", args: [payee.address] });
    const hash = await d.wallet(payee).writeContract({
      address: d.contract,
      abi: paymentChannelAbi,
      functionName: "settle",
      args: [{ channel: record.params, nonce: 5n, cumulativeAmount: 5000n, claimed: 4500n, signature: last!.signature }],
      account: payee,
      chain: d.chain,
    });
    const receipt = await d.publicClient.waitForTransactionReceipt({ hash });
    assert.equal(receipt.status, "success");
    const afterSettle = await d.publicClient.readContract({ address: d.contract, abi: paymentChannelAbi, functionName: "getChannel", args: [record.channelId] });
    assert.equal(afterSettle.paid, 4500n);
    const now = await d.publicClient.readContract({ address: d.token, abi: [{ type: "function", name: "balanceOf", stateMutability: "view", inputs: [{ type: "address" }], outputs: [{ type: "uint256" }] }], functionName: "balanceOf", args: [payee.address] });
    assert.equal(now - before, 4500n);

    // A voucher signed by someone else is refused by the contract.
    const forged = await signVoucher(payee, 31337, d.contract, { channelId: record.channelId, nonce: 6n, cumulativeAmount: 6000n });
    await assert.rejects(
      d.publicClient.simulateContract({
        address: d.contract,
        abi: paymentChannelAbi,
        functionName: "settle",
        args: [{ channel: record.params, nonce: 6n, cumulativeAmount: 6000n, claimed: 6000n, signature: forged }],
        account: payee,
      }),
    );
    assert.equal(getAddress(record.params.payer), payer.address);
  });
});
