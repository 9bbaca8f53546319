// Against the REAL x402 Channels node (target/debug/x402-node) on a devnet (target/debug/x402-devnet: anvil and the
// contracts), with a 20 ms upstream: the official SDK's fetch and axios clients with our scheme pay the node's
// gateway, an Express app with @x402/express and our server scheme charges through the node as its facilitator,
// and the facilitator API refuses what it must.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { x402Client } from "@x402/core/client";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { decodePaymentSignatureHeader } from "@x402/core/http";
import { wrapFetchWithPayment } from "@x402/fetch";
import { wrapAxiosWithPayment } from "@x402/axios";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import axios from "axios";
import express from "express";
import { parseAbi, type Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount, type PrivateKeyAccount } from "viem/accounts";
import {
  ChannelScheme,
  ChannelVoucherServerScheme,
  MemoryChannelStore,
  SCHEME,
  bearerAuthHeaders,
  channelHttpClient,
  withChannelAxios,
  wrapFetchWithChannel,
  type ChannelStore,
} from "../src/index.js";
import { FACILITATOR_TOKEN, PRICE, startNode, type NodeDevnet } from "./node.js";

const mintAbi = parseAbi(["function mint(address to, uint256 amount)"]);

async function pool<T>(n: number, width: number, f: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await f(i);
      }
    }),
  );
  return out;
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function close(server: Server) {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
}

describe("against the real node on a devnet", { timeout: 180_000 }, () => {
  let n: NodeDevnet;
  const servers: Server[] = [];

  before(async () => {
    n = await startNode();
  });
  after(async () => {
    for (const s of servers) await close(s);
    await n?.stop();
  });

  /** A fresh payer with ETH for gas and 100 tUSD (anyone may mint the test token). */
  async function payer(): Promise<PrivateKeyAccount> {
    const account = privateKeyToAccount(generatePrivateKey());
    await n.publicClient.request({ method: "anvil_setBalance" as never, params: [account.address, "0x56BC75E2D63100000"] as never });
    const faucet = n.accounts[8]!;
    const hash = await n.wallet(faucet).writeContract({
      address: n.token,
      abi: mintAbi,
      functionName: "mint",
      args: [account.address, 100_000_000n],
      account: faucet,
      chain: n.chain,
    });
    await n.publicClient.waitForTransactionReceipt({ hash });
    return account;
  }

  function scheme(account: PrivateKeyAccount, opts: { store?: ChannelStore; creditWindow?: number } = {}) {
    return new ChannelScheme({
      account,
      publicClient: n.publicClient,
      opener: { kind: "onchain", wallet: n.wallet(account as never) as never },
      deposit: { multiple: 300n, cap: 10_000_000n },
      store: opts.store ?? new MemoryChannelStore(),
      creditWindow: opts.creditWindow,
      contracts: [n.contract],
    });
  }

  function client(s: ChannelScheme) {
    // The test token is not one of the SDK's default assets: allow it explicitly.
    return new x402Client().register(n.network, s).setSpendControls({ allowedAssets: [{ network: n.network, asset: n.token }] });
  }

  async function channelOf(s: ChannelScheme) {
    const [record] = await s.store.list();
    assert.ok(record, "the client has a channel");
    const state = (await n.channels()).find((c) => c.id.toLowerCase() === record.channelId.toLowerCase());
    assert.ok(state, `the node knows channel ${record.channelId}`);
    return { record, state };
  }

  it("the 402 offers channel-voucher with the channel domain under extra.domain, absolute resource URL, no-store", async () => {
    const r = await fetch(`${n.url}/paid/terms?x=1`);
    assert.equal(r.status, 402);
    assert.equal(r.headers.get("cache-control"), "no-store");
    const body = (await r.json()) as { x402Version: number; resource: { url: string }; accepts: Record<string, unknown>[] };
    assert.equal(body.x402Version, 2);
    assert.ok(!("message" in body), "no top-level message");
    assert.match(body.resource.url, /^http:\/\/127\.0\.0\.1:\d+\/paid\/terms\?x=1$/);
    const offer = body.accepts[0] as { scheme: string; payTo: string; asset: string; extra: Record<string, unknown> };
    assert.equal(offer.scheme, SCHEME);
    assert.equal(offer.payTo, n.provider, "EIP-55 payTo");
    assert.equal(offer.asset, n.token, "EIP-55 asset");
    assert.equal(offer.extra.contract, n.contract);
    assert.deepEqual(offer.extra.domain, { name: "x402 Payment Channel", version: "2" });
    // The token's own EIP-712 domain, read by the node from the token (EIP-5267), as in the `exact` scheme.
    const [, name, version] = await n.publicClient.readContract({
      address: n.token,
      abi: parseAbi(["function eip712Domain() view returns (bytes1, string, string, uint256, address, bytes32, uint256[])"]),
      functionName: "eip712Domain",
    });
    assert.deepEqual([offer.extra.name, offer.extra.version], [name, version]);
  });

  it("wrapFetchWithPayment pays 100 requests sequentially and 100 more 16 at a time on one channel", async () => {
    const s = scheme(await payer());
    const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
    for (let i = 0; i < 100; i++) {
      const r = await pay(`${n.url}/paid/fetch`);
      assert.equal(r.status, 200, `request ${i}: ${r.status}`);
      assert.equal(((await r.json()) as { path: string }).path, "/paid/fetch");
    }
    const statuses = await pool(100, 16, async () => {
      const r = await pay(`${n.url}/paid/fetch16`);
      await r.text();
      return r.status;
    });
    assert.deepEqual(new Set(statuses), new Set([200]));
    assert.equal((await s.store.list()).length, 1, "one channel");
    const { record, state } = await channelOf(s);
    assert.equal(BigInt(state.charged), 200n * PRICE);
    assert.equal(BigInt(record.spent), 200n * PRICE);
    assert.equal(BigInt(record.maxSigned), 200n * PRICE, "never signed more than was charged");
  });

  it("@x402/axios pays 100 requests sequentially and 100 more 16 at a time on one channel", async () => {
    const s = scheme(await payer());
    const c = client(s);
    // @x402/axios 2.11.0 carries its own @x402/core: same shape, separate declarations.
    const api = wrapAxiosWithPayment(withChannelAxios(axios.create({ baseURL: n.url }), c, s), c as never);
    for (let i = 0; i < 100; i++) assert.equal((await api.get("/paid/axios")).status, 200);
    const statuses = await pool(100, 16, async () => (await api.get("/paid/axios16")).status);
    assert.deepEqual(new Set(statuses), new Set([200]));
    const { record, state } = await channelOf(s);
    assert.equal(BigInt(state.charged), 200n * PRICE);
    assert.equal(BigInt(record.maxSigned), 200n * PRICE);
  });

  it("pays in one HTTP request once it knows a route's terms, and from credit windows", async () => {
    const s = scheme(await payer(), { creditWindow: 10 });
    let requests = 0;
    const counted: typeof fetch = (input, init) => {
      requests++;
      return fetch(input, init);
    };
    const pay = wrapFetchWithChannel(counted, client(s), s);
    for (let i = 0; i < 50; i++) {
      const r = await pay(`${n.url}/paid/window`);
      assert.equal(r.status, 200);
      await r.text();
    }
    assert.equal(requests, 51, "one unpaid request to learn the terms, then one per payment");
    const statuses = await pool(50, 16, async () => {
      const r = await pay(`${n.url}/paid/window`);
      await r.text();
      return r.status;
    });
    assert.deepEqual(new Set(statuses), new Set([200]));
    const { record, state } = await channelOf(s);
    assert.equal(BigInt(state.charged), 100n * PRICE, "charged once per request");
    assert.ok(state.nonce <= 20, `${state.nonce} vouchers for 100 requests`);
    assert.ok(BigInt(record.maxSigned) - BigInt(state.charged) <= 10n * PRICE, "prepaid at most one window");
  });

  it("a client that lost its state resynchronises from the node's signed corrective state and pays on", async () => {
    const store = new MemoryChannelStore();
    const s = scheme(await payer(), { store });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${n.url}/paid/r`)).status, 200);
    const [old] = await store.list();
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${n.url}/paid/r`)).status, 200);
    // Back to the state of five requests ago (a restored backup): its next voucher is the very one the node served
    // (409 already_served: it skips a nonce and pays again), the one after that gets the signed corrective state.
    await store.put(old!);
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${n.url}/paid/r`)).status, 200);
    const { record, state } = await channelOf(s);
    assert.equal(BigInt(state.charged), 15n * PRICE);
    assert.equal(record.nonce, String(state.nonce));
    assert.ok(Number(record.nonce) >= 15);
  });

  it("refuses a forged corrective state (signature not its own) and keeps its record", async () => {
    // A proxy in front of the node that alters the signature of every corrective state it forwards.
    const proxy = createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const headers = new Headers();
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string" && k !== "host") headers.set(k, v);
      const r = await fetch(`${n.url}${req.url}`, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
      let text = await r.text();
      const out: Record<string, string> = {};
      r.headers.forEach((v, k) => (out[k] = v));
      if (r.status === 402) {
        const body = JSON.parse(text) as { accepts: { extra?: { channel?: { signature?: Hex } } }[] };
        for (const a of body.accepts) {
          const sig = a.extra?.channel?.signature;
          if (sig) a.extra!.channel!.signature = `${sig.slice(0, 20)}${sig[20] === "a" ? "b" : "a"}${sig.slice(21)}` as Hex;
        }
        text = JSON.stringify(body);
        out["payment-required"] = Buffer.from(text).toString("base64");
        delete out["content-length"];
      }
      delete out["transfer-encoding"];
      res.writeHead(r.status, out);
      res.end(text);
    });
    servers.push(proxy);
    const url = await listen(proxy);
    const store = new MemoryChannelStore();
    const s = scheme(await payer(), { store });
    const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
    for (let i = 0; i < 3; i++) assert.equal((await pay(`${url}/paid/forged`)).status, 200);
    const [old] = await store.list();
    for (let i = 0; i < 2; i++) assert.equal((await pay(`${url}/paid/forged`)).status, 200);
    await store.put(old!);
    await assert.rejects(pay(`${url}/paid/forged`), /without this client.s signature/);
    const [after] = await store.list();
    // The voucher it signed again (served already: 409), a skipped nonce, the voucher refused with the forged state.
    assert.equal(after!.nonce, String(Number(old!.nonce) + 3), "nothing taken from the forged state");
    assert.equal(BigInt((await channelOf(s)).state.charged), 5n * PRICE);
  });

  it("opens gaslessly through the node's relay", async () => {
    const account = await payer();
    const s = new ChannelScheme({
      account,
      publicClient: n.publicClient,
      opener: { kind: "relay", url: n.url },
      deposit: { multiple: 50n, cap: 1_000_000n },
      contracts: [n.contract],
    });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 10; i++) assert.equal((await pay(`${n.url}/paid/gasless`)).status, 200);
    assert.equal(await n.publicClient.getTransactionCount({ address: account.address }), 0, "the payer sent no transaction");
    assert.equal(BigInt((await channelOf(s)).state.charged), 10n * PRICE);
  });

  describe("an Express app with @x402/express, our server scheme and the node as facilitator", () => {
    let app = "";
    let served = 0;

    before(async () => {
      const resourceServer = new x402ResourceServer(
        new HTTPFacilitatorClient({ url: `${n.url}/facilitator`, createAuthHeaders: bearerAuthHeaders(FACILITATOR_TOKEN) }),
      ).register(n.network, new ChannelVoucherServerScheme({ asset: n.token }));
      const e = express();
      e.use(
        paymentMiddleware(
          { "GET /api/*": { accepts: { scheme: SCHEME, network: n.network, payTo: n.provider, price: "$0.001" }, description: "paid API" } },
          resourceServer,
        ),
      );
      e.get("/api/*rest", (req, res) => {
        served++;
        setTimeout(() => res.json({ ok: true, path: req.path }), 5);
      });
      const server = createServer(e);
      servers.push(server);
      app = await listen(server);
    });

    it("charges exactly, sequentially and 8 at a time, and refuses a replayed voucher", async () => {
      const s = scheme(await payer());
      const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
      let lastHeader: string | undefined;
      const spy: typeof fetch = async (input, init) => {
        const r = new Request(input, init);
        const h = r.headers.get("payment-signature");
        if (h) lastHeader = h;
        return fetch(r);
      };
      const paySpy = wrapFetchWithPayment(spy, channelHttpClient(client(s), s));
      for (let i = 0; i < 30; i++) {
        const r = await (i === 29 ? paySpy : pay)(`${app}/api/seq`);
        assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.status === 200 ? "" : await r.text()}`);
        assert.ok(r.headers.get("payment-response"), "PAYMENT-RESPONSE");
        await r.text();
      }
      const statuses = await pool(40, 8, async () => {
        const r = await pay(`${app}/api/par`);
        await r.text();
        return r.status;
      });
      assert.deepEqual(new Set(statuses), new Set([200]));
      const { record, state } = await channelOf(s);
      assert.equal(BigInt(state.charged), 70n * PRICE);
      assert.equal(BigInt(record.spent), 70n * PRICE);
      const before = served;
      // The same voucher again: refused, the handler does not run, nothing more is charged.
      assert.ok(lastHeader);
      assert.equal(decodePaymentSignatureHeader(lastHeader).accepted.scheme, SCHEME);
      const replay = await fetch(`${app}/api/seq`, { headers: { "PAYMENT-SIGNATURE": lastHeader } });
      assert.equal(replay.status, 402);
      assert.equal(served, before);
      assert.equal(BigInt((await channelOf(s)).state.charged), 70n * PRICE);
    });

    it("a client that lost its state resynchronises through the facilitator's corrective state", async () => {
      const store = new MemoryChannelStore();
      const s = scheme(await payer(), { store });
      const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
      for (let i = 0; i < 4; i++) assert.equal((await pay(`${app}/api/r`)).status, 200);
      const [old] = await store.list();
      for (let i = 0; i < 3; i++) assert.equal((await pay(`${app}/api/r`)).status, 200);
      await store.put(old!);
      for (let i = 0; i < 3; i++) {
        const r = await pay(`${app}/api/r`);
        assert.equal(r.status, 200, `after the restore, request ${i}: ${r.status} ${r.status === 200 ? "" : await r.text()}`);
      }
      assert.equal(BigInt((await channelOf(s)).state.charged), 10n * PRICE);
    });
  });

  describe("the facilitator API", () => {
    const post = (path: string, body: string, auth = true) =>
      fetch(`${n.url}/facilitator/${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(auth ? { authorization: `Bearer ${FACILITATOR_TOKEN}` } : {}) },
        body,
      });

    it("lists the schemes it verifies", async () => {
      assert.equal((await fetch(`${n.url}/facilitator/supported`)).status, 401);
      const r = await fetch(`${n.url}/facilitator/supported`, { headers: { authorization: `Bearer ${FACILITATOR_TOKEN}` } });
      assert.equal(r.status, 200);
      const body = (await r.json()) as { kinds: { scheme: string; network: string; extra?: { contract?: string } }[] };
      const ours = body.kinds.find((k) => k.scheme === SCHEME);
      assert.equal(ours?.network, n.network);
      assert.equal(ours?.extra?.contract, n.contract);
    });

    it("refuses requests without the token, malformed bodies, unknown schemes and bad payloads with clear errors", async () => {
      const requirements = {
        scheme: SCHEME,
        network: n.network,
        amount: String(PRICE),
        asset: n.token,
        payTo: n.provider,
        maxTimeoutSeconds: 30,
        extra: { contract: n.contract, domain: { name: "x402 Payment Channel", version: "2" } },
      };
      const body = (scheme: string, payload: unknown) =>
        JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: { ...requirements, scheme }, payload }, paymentRequirements: requirements });
      const voucher = { channelId: `0x${"11".repeat(32)}`, nonce: 1, cumulativeAmount: "1000", signature: `0x${"22".repeat(65)}` };

      const noToken = await post("verify", body(SCHEME, voucher), false);
      assert.equal(noToken.status, 401);
      const wrongToken = await fetch(`${n.url}/facilitator/settle`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: "Bearer not-the-token-not-the-token-0000" },
        body: body(SCHEME, voucher),
      });
      assert.equal(wrongToken.status, 401);

      const malformed = await post("verify", "{not json");
      assert.equal(malformed.status, 400);
      const m = (await malformed.json()) as { isValid: boolean; invalidReason: string; invalidMessage: string };
      assert.equal(m.isValid, false);
      assert.equal(m.invalidReason, "invalid_payload");
      assert.ok(m.invalidMessage.length > 0);

      const unknown = (await (await post("verify", body("bogus", voucher))).json()) as { isValid: boolean; invalidReason: string };
      assert.deepEqual([unknown.isValid, unknown.invalidReason], [false, "invalid_scheme"]);

      // Our scheme with an `exact`-shaped payload: decoded strictly for the scheme, refused as invalid_payload.
      const exactShaped = { signature: `0x${"33".repeat(65)}`, authorization: { from: n.provider, to: n.provider, value: "1000", validAfter: "0", validBefore: "9999999999", nonce: `0x${"44".repeat(32)}` } };
      const wrongShape = (await (await post("verify", body(SCHEME, exactShaped))).json()) as { isValid: boolean; invalidReason: string };
      assert.deepEqual([wrongShape.isValid, wrongShape.invalidReason], [false, "invalid_payload"]);

      // A voucher for a channel the node never saw.
      const unknownChannel = (await (await post("verify", body(SCHEME, voucher))).json()) as { isValid: boolean; invalidReason: string };
      assert.equal(unknownChannel.isValid, false);
      assert.ok(unknownChannel.invalidReason, "a reason");

      const settle = (await (await post("settle", body(SCHEME, voucher))).json()) as { success: boolean; errorReason: string; transaction: string };
      assert.equal(settle.success, false);
      assert.ok(settle.errorReason);
      assert.equal(settle.transaction, "");

      const big = await post("verify", JSON.stringify({ pad: "x".repeat(70 * 1024) }));
      assert.equal(big.status, 413);
    });
  });
});
