// The channel scheme through the official SDK's fetch and axios wrappers, against a server speaking our wire format
// on a real anvil.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { x402Client } from "@x402/core/client";
import { wrapFetchWithPayment } from "@x402/fetch";
import { wrapAxiosWithPayment } from "@x402/axios";
import axios from "axios";
import type { Address } from "viem";
import type { HDAccount } from "viem/accounts";
import {
  ChannelScheme,
  FileChannelStore,
  MemoryChannelStore,
  channelHttpClient,
  paymentChannelAbi,
  withChannelAxios,
  wrapFetchWithChannel,
  type ChannelStore,
} from "../src/index.js";
import { mint, startDevnet, type Devnet } from "./anvil.js";
import { TestServer, type TestServerOptions } from "./server.js";

const PRICE = 1000n;

describe("channel scheme over HTTP", () => {
  let d: Devnet;
  let payee: Address;
  let nextPayer = 3;
  const servers: TestServer[] = [];

  before(async () => {
    d = await startDevnet();
    payee = d.accounts[2]!.address;
  });
  after(async () => {
    for (const s of servers) await s.stop();
    await d?.stop();
  });

  async function server(opts: Partial<TestServerOptions> = {}) {
    const s = await new TestServer(d, { payee, price: PRICE, ...opts }).start();
    servers.push(s);
    return s;
  }

  async function payer(): Promise<HDAccount> {
    const a = d.accounts[nextPayer++]!;
    await mint(d, a.address, 100_000_000n);
    return a;
  }

  function scheme(account: HDAccount, opts: { store?: ChannelStore; creditWindow?: number; cap?: bigint } = {}) {
    return new ChannelScheme({
      account,
      publicClient: d.publicClient,
      opener: { kind: "onchain", wallet: d.wallet(account) as never },
      deposit: { multiple: 200n, cap: opts.cap ?? 10_000_000n },
      store: opts.store ?? new MemoryChannelStore(),
      creditWindow: opts.creditWindow,
      contracts: [d.contract],
    });
  }

  function client(s: ChannelScheme, maxAmountPerPayment?: string) {
    // Our test token is not one of the SDK's default assets: allow it explicitly (the SDK refuses unknown assets).
    return new x402Client()
      .register("eip155:31337", s)
      .setSpendControls({ allowedAssets: [{ network: "eip155:31337", asset: d.token, ...(maxAmountPerPayment ? { maxAmountPerPayment } : {}) }] });
  }

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

  it("wrapFetchWithPayment pays 100 requests sequentially and 100 more 16 at a time on one channel", async () => {
    const srv = await server();
    const s = scheme(await payer());
    const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
    for (let i = 0; i < 100; i++) {
      const r = await pay(`${srv.url}/paid`);
      assert.equal(r.status, 200, `request ${i}`);
      await r.text();
    }
    const statuses = await pool(100, 16, async () => {
      const r = await pay(`${srv.url}/paid`);
      await r.text();
      return r.status;
    });
    assert.deepEqual(new Set(statuses), new Set([200]));
    assert.equal(srv.paidRequests, 200);
    assert.equal(srv.channels.size, 1, "one channel");
    const [record] = await s.store.list();
    const state = srv.channels.get(record!.channelId)!;
    assert.equal(state.charged, 200n * PRICE);
    assert.equal(BigInt(record!.spent), 200n * PRICE);
    assert.equal(BigInt(record!.maxSigned), 200n * PRICE, "never signed more than was charged");
    // Two HTTP requests per payment with the stock wrapper (the SDK sends every request unpaid first).
    assert.equal(srv.httpRequests, 400);
  });

  it("@x402/axios pays 100 requests sequentially and 100 more 16 at a time on one channel", async () => {
    const srv = await server();
    const s = scheme(await payer());
    const c = client(s);
    const api = wrapAxiosWithPayment(withChannelAxios(axios.create({ baseURL: srv.url }), c, s), c as never); // @x402/axios 2.11.0 carries its own @x402/core 2.11.0: same shape, separate declarations.
    for (let i = 0; i < 100; i++) {
      const r = await api.get("/paid");
      assert.equal(r.status, 200);
    }
    const statuses = await pool(100, 16, async () => (await api.get("/paid")).status);
    assert.deepEqual(new Set(statuses), new Set([200]));
    assert.equal(srv.paidRequests, 200);
    const [record] = await s.store.list();
    assert.equal(BigInt(record!.spent), 200n * PRICE);
    assert.equal(BigInt(record!.maxSigned), 200n * PRICE);
  });

  it("pays in one HTTP request once it knows a route's terms", async () => {
    const srv = await server();
    const s = scheme(await payer());
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 50; i++) {
      const r = await pay(`${srv.url}/one`);
      assert.equal(r.status, 200);
      await r.text();
    }
    const statuses = await pool(50, 16, async () => {
      const r = await pay(`${srv.url}/one`);
      await r.text();
      return r.status;
    });
    assert.deepEqual(new Set(statuses), new Set([200]));
    assert.equal(srv.paidRequests, 100);
    // The first request learned the terms unpaid; each later one went out paid.
    assert.equal(srv.httpRequests, 101);
    assert.deepEqual(srv.refusals, []);
  });

  it("pays from a credit window with PAYMENT-SESSION, one voucher per window", async () => {
    const srv = await server({ maxCreditWindow: 10 });
    const s = scheme(await payer(), { creditWindow: 10 });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 50; i++) {
      const r = await pay(`${srv.url}/window`);
      assert.equal(r.status, 200);
      await r.text();
    }
    assert.equal(srv.paidRequests, 50);
    assert.equal(srv.vouchers, 5);
    assert.equal(srv.sessionsUsed, 45);
    // The stock wrapper uses the window too (through the 402 hook of channelHttpClient).
    const stock = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
    for (let i = 0; i < 20; i++) {
      const r = await stock(`${srv.url}/window`);
      assert.equal(r.status, 200);
      await r.text();
    }
    assert.equal(srv.paidRequests, 70);
    assert.equal(srv.vouchers, 7);
    const [record] = await s.store.list();
    assert.equal(srv.channels.get(record!.channelId)!.charged, 70n * PRICE);
  });

  it("@x402/axios pays from credit windows", async () => {
    const srv = await server({ maxCreditWindow: 10 });
    const s = scheme(await payer(), { creditWindow: 10 });
    const c = client(s);
    const api = wrapAxiosWithPayment(withChannelAxios(axios.create({ baseURL: srv.url }), c, s), c as never);
    for (let i = 0; i < 30; i++) assert.equal((await api.get("/window-axios")).status, 200);
    assert.equal(srv.paidRequests, 30);
    assert.equal(srv.vouchers, 3);
    assert.equal(srv.sessionsUsed, 27);
  });

  it("pays 200 requests 16 at a time from credit windows, never charged twice", async () => {
    const srv = await server({ maxCreditWindow: 10 });
    const s = scheme(await payer(), { creditWindow: 10 });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    const statuses = await pool(200, 16, async () => {
      const r = await pay(`${srv.url}/window16`);
      await r.text();
      return r.status;
    });
    assert.deepEqual(new Set(statuses), new Set([200]));
    assert.equal(srv.paidRequests, 200);
    const [record] = await s.store.list();
    const state = srv.channels.get(record!.channelId)!;
    assert.equal(state.charged, 200n * PRICE);
    // Prepaid but unused credit is at most one window.
    assert.ok(BigInt(record!.maxSigned) - state.charged <= 10n * PRICE, `${record!.maxSigned} signed for ${state.charged} charged; ${srv.vouchers} vouchers, ${srv.sessionsUsed} sessions, refusals ${srv.refusals.join(",")}`);
    assert.ok(srv.vouchers < 200, `${srv.vouchers} vouchers`);
  });

  it("applies the SDK's spend cap to each voucher's increase", async () => {
    const srv = await server({ maxCreditWindow: 10 });
    const s = scheme(await payer(), { creditWindow: 10 });
    const pay = wrapFetchWithChannel(fetch, client(s, "3000"), s);
    for (let i = 0; i < 12; i++) {
      const r = await pay(`${srv.url}/capped`);
      assert.equal(r.status, 200);
      await r.text();
    }
    // Windows of 3 requests (3000 per voucher), not 10.
    assert.equal(srv.vouchers, 4);
    const refused = wrapFetchWithChannel(fetch, client(scheme(await payer()), "999"), s);
    await assert.rejects(refused(`${srv.url}/capped`));
  });

  it("resynchronises lost state from a corrective 402 that carries its own signature", async () => {
    const srv = await server();
    const store = new MemoryChannelStore();
    const s = scheme(await payer(), { store });
    const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${srv.url}/r`)).status, 200);
    const [old] = await store.list();
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${srv.url}/r`)).status, 200);
    // The client comes back with the state of five requests ago (a restored backup).
    await store.put(old!);
    for (let i = 0; i < 5; i++) assert.equal((await pay(`${srv.url}/r`)).status, 200);
    assert.deepEqual(srv.refusals, ["nonce_too_low"]);
    const [now] = await store.list();
    assert.equal(now!.nonce, "15");
    assert.equal(srv.channels.get(now!.channelId)!.charged, 15n * PRICE);
  });

  for (const tamper of ["signature", "inflate"] as const) {
    it(`refuses a corrective 402 it cannot verify (${tamper})`, async () => {
      const srv = await server({ tamper });
      const store = new MemoryChannelStore();
      const s = scheme(await payer(), { store });
      const pay = wrapFetchWithPayment(fetch, channelHttpClient(client(s), s));
      for (let i = 0; i < 5; i++) assert.equal((await pay(`${srv.url}/r`)).status, 200);
      const [old] = await store.list();
      // Two vouchers the restored client will not remember: the node's state is above anything it signs again.
      for (let i = 0; i < 2; i++) assert.equal((await pay(`${srv.url}/r`)).status, 200);
      await store.put(old!);
      await assert.rejects(pay(`${srv.url}/r`), /without this client.s signature/);
      // Nothing was taken from the unverifiable state: the record holds only the voucher the client signed again.
      const [after] = await store.list();
      assert.deepEqual({ ...after!, signature: undefined }, { ...old!, nonce: "6", cumulative: String(6n * PRICE), maxSigned: String(6n * PRICE), signature: undefined });
    });
  }

  it("keeps its state in a file store across restarts", async () => {
    const srv = await server();
    const dir = await mkdtemp(join(tmpdir(), "x402-ts-"));
    try {
      const account = await payer();
      const path = join(dir, "channels.json");
      const first = scheme(account, { store: new FileChannelStore(path) });
      const pay1 = wrapFetchWithChannel(fetch, client(first), first);
      for (let i = 0; i < 3; i++) assert.equal((await pay1(`${srv.url}/f`)).status, 200);
      const second = scheme(account, { store: new FileChannelStore(path) });
      const pay2 = wrapFetchWithChannel(fetch, client(second), second);
      for (let i = 0; i < 3; i++) assert.equal((await pay2(`${srv.url}/f`)).status, 200);
      assert.equal(srv.channels.size, 1, "the restarted client reuses its channel");
      assert.deepEqual(srv.refusals, []);
      const [record] = await new FileChannelStore(path).list();
      assert.equal(record!.nonce, "6");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("opens gaslessly through the node's relay (permit + OpenAuthorization binding the deposit)", async () => {
    const srv = await server();
    const account = await payer();
    const s = new ChannelScheme({
      account,
      publicClient: d.publicClient,
      opener: { kind: "relay", url: srv.url },
      deposit: { multiple: 50n, cap: 1_000_000n },
    });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 10; i++) assert.equal((await pay(`${srv.url}/g`)).status, 200);
    assert.equal(srv.relayed, 1);
    assert.equal(await d.publicClient.getTransactionCount({ address: account.address }), 0, "the payer sent no transaction");
    const [record] = await s.store.list();
    const onchain = await d.publicClient.readContract({ address: d.contract, abi: paymentChannelAbi, functionName: "getChannel", args: [record!.channelId] });
    assert.equal(onchain.deposit, 50_000n);
    assert.equal(srv.channels.get(record!.channelId)!.charged, 10n * PRICE);
  });

  it("refuses a relay's answer for another channel", async () => {
    const account = await payer();
    const s = new ChannelScheme({
      account,
      publicClient: d.publicClient,
      opener: {
        kind: "relay",
        url: "http://relay.invalid",
        fetch: (async () => new Response(JSON.stringify({ channelId: `0x${"11".repeat(32)}`, deposit: "50000" }))) as typeof fetch,
      },
      deposit: { multiple: 50n, cap: 1_000_000n },
    });
    const srv = await server();
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    await assert.rejects(pay(`${srv.url}/g`), /relay opened 0x1111/);
  });

  it("opens a new channel when the node reports the old one closed", async () => {
    const srv = await server();
    const s = scheme(await payer());
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 3; i++) assert.equal((await pay(`${srv.url}/c`)).status, 200);
    const [first] = await s.store.list();
    srv.closed.add(first!.channelId);
    for (let i = 0; i < 3; i++) assert.equal((await pay(`${srv.url}/c`)).status, 200);
    const records = await s.store.list();
    const second = records.find((r) => r.status === "open");
    assert.notEqual(second!.channelId, first!.channelId);
    assert.equal(second!.nonce, "3");
    // The retired channel is kept, with its parameters and latest voucher, for an exit or a close.
    const retired = records.find((r) => r.status === "closed");
    assert.equal(retired!.channelId, first!.channelId);
    assert.equal(retired!.nonce, "4", "the refused voucher was signed and stored before it was sent");
    assert.deepEqual(srv.refusals, ["channel_closed"]);
  });

  it("refuses a receipt claiming more than it signed", async () => {
    const srv = await server({ tamper: "receipt" });
    const s = scheme(await payer());
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    await assert.rejects(pay(`${srv.url}/lie`), /above what this client signed/);
  });

  it("refuses a channel contract it does not trust", async () => {
    const srv = await server();
    const account = await payer();
    const s = new ChannelScheme({
      account,
      publicClient: d.publicClient,
      opener: { kind: "onchain", wallet: d.wallet(account) as never },
      deposit: { cap: 1_000_000n },
      contracts: [d.token],
    });
    await assert.rejects(wrapFetchWithChannel(fetch, client(s), s)(`${srv.url}/x`), /not one this client trusts/);
    assert.equal(await d.publicClient.getTransactionCount({ address: account.address }), 0);
  });

  it("tops up when the deposit runs out", async () => {
    const srv = await server({ minDeposit: 1000n });
    const account = await payer();
    const s = new ChannelScheme({
      account,
      publicClient: d.publicClient,
      opener: { kind: "onchain", wallet: d.wallet(account) as never },
      deposit: { multiple: 3n, cap: 100_000n },
    });
    const pay = wrapFetchWithChannel(fetch, client(s), s);
    for (let i = 0; i < 7; i++) assert.equal((await pay(`${srv.url}/t`)).status, 200);
    const [record] = await s.store.list();
    const onchain = await d.publicClient.readContract({ address: d.contract, abi: paymentChannelAbi, functionName: "getChannel", args: [record!.channelId] });
    assert.equal(onchain.deposit, 9000n);
    assert.equal(srv.channels.size, 1);
  });
});
