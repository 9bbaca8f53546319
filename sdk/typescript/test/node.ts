// The REAL x402 Channels node on a devnet: the `x402-devnet` binary (anvil, PaymentChannel and the test stablecoin
// deployed, anvil's accounts 1-9 funded with 10,000 tUSD) and the `x402-node` binary from target/debug, with a
// configuration written here, in front of a slow upstream (20 ms per request). Built first by `cargo build -p
// x402-node -p x402-devnet`.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createPublicClient, createWalletClient, defineChain, http, type Address, type PublicClient } from "viem";
import { mnemonicToAccount, type HDAccount } from "viem/accounts";
import { ROOT } from "./anvil.js";

const BIN = join(ROOT, "target/debug");
const ANVIL = join(ROOT, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
const MNEMONIC = "test test test test test test test test test test test junk";
/** The facilitator API's bearer token (the node wants at least 32 characters). */
export const FACILITATOR_TOKEN = "ts-facilitator-token-0123456789abcdef";
export const ADMIN_TOKEN = "ts-admin-token-0123456789abcdef";
/** The price of the node's routes, in tUSD base units (0.001 tUSD). */
export const PRICE = 1000n;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/**
 * Builds the two binaries (a no-op when they are fresh: a stale node would test old code). `X402_TS_NO_BUILD=1`
 * uses whatever target/debug holds.
 */
function ensureBinaries() {
  if (process.env.X402_TS_NO_BUILD && existsSync(join(BIN, "x402-node")) && existsSync(join(BIN, "x402-devnet"))) return;
  execFileSync("cargo", ["build", "--quiet", "--locked", "-p", "x402-node", "-p", "x402-devnet"], { cwd: ROOT, stdio: "inherit" });
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

/** The slow upstream behind the node: answers every request after `delayMs` with its method and path. */
export class Upstream {
  private server!: Server;
  url = "";
  requests = 0;
  constructor(readonly delayMs = 20) {}
  async start() {
    this.server = createHttpServer((req, res) => {
      this.requests++;
      setTimeout(() => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ ok: true, method: req.method, path: req.url }));
      }, this.delayMs);
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this;
  }
  async stop() {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

export interface NodeDevnet {
  rpc: string;
  chain: ReturnType<typeof defineChain>;
  network: "eip155:31337";
  publicClient: PublicClient;
  contract: Address;
  token: Address;
  /** The node's provider (anvil account 0): the payee of every channel. */
  provider: Address;
  /** anvil's accounts; 1 to 8 are funded payers, 9 pays the relay's gas. */
  accounts: HDAccount[];
  wallet(account: HDAccount): ReturnType<typeof createWalletClient>;
  /** The node's base URL. */
  url: string;
  upstream: Upstream;
  /** `GET /admin/channels` of the node. */
  channels(): Promise<{ id: string; payer: string; nonce: number; charged: string; deposit: string }[]>;
  stop(): Promise<void>;
}

/** Starts the devnet, the upstream and the node; `stop()` ends all three and removes the files. */
export async function startNode(): Promise<NodeDevnet> {
  ensureBinaries();
  const dir = await mkdtemp(join(tmpdir(), "x402-ts-node-"));
  const rpcPort = await freePort();
  const nodePort = await freePort();
  const children: ChildProcess[] = [];
  const upstream = await new Upstream(20).start();
  const cleanup = async () => {
    for (const c of children.reverse()) await stop(c);
    await upstream.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // The devnet: its stdout names the contracts; it stays up until SIGTERM.
    const devnet = spawn(
      join(BIN, "x402-devnet"),
      ["--port", String(rpcPort), "--config", join(dir, "devnet/node.toml"), "--upstream", upstream.url, "--anvil", ANVIL, "--artifacts", join(ROOT, "out")],
      { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] },
    );
    children.push(devnet);
    const found: Record<string, string> = {};
    createInterface({ input: devnet.stdout! }).on("line", (line) => {
      const m = /^(RPC|PaymentChannel|TestStablecoin)\s+(\S+)/.exec(line);
      if (m) found[m[1]!] = m[2]!;
    });
    await until("the devnet's addresses", async () => (found.PaymentChannel && found.TestStablecoin && found.RPC ? true : undefined), 60_000);
    const rpc = found.RPC!.replace("localhost", "127.0.0.1");
    const contract = found.PaymentChannel as Address;
    const token = found.TestStablecoin as Address;
    const accounts = Array.from({ length: 10 }, (_, i) => mnemonicToAccount(MNEMONIC, { addressIndex: i }));
    const keyHex = (a: HDAccount) => Buffer.from(a.getHdKey().privateKey!).toString("hex");
    await writeFile(join(dir, "provider.key"), `0x${keyHex(accounts[0]!)}\n`, { mode: 0o600 });
    await writeFile(join(dir, "relay.key"), `0x${keyHex(accounts[9]!)}\n`, { mode: 0o600 });
    const url = `http://127.0.0.1:${nodePort}`;
    const config = `listen = "127.0.0.1:${nodePort}"
upstream = "${upstream.url}"
data_dir = "${join(dir, "node-data")}"
admin_token = "${ADMIN_TOKEN}"
max_timeout_seconds = 30

[chain]
rpc_url = "${rpc}"
contract = "${contract}"
confirmations = 0
poll_interval_ms = 100

[payment]
asset = "${token}"
min_challenge_period = 3600
min_deposit = "0"
max_credit_window = 100

[provider]
key_file = "${join(dir, "provider.key")}"

[relay]
enabled = true
key_file = "${join(dir, "relay.key")}"

[facilitator]
token = "${FACILITATOR_TOKEN}"

[settlement]
enabled = false

[[routes]]
path = "/paid/{*rest}"
price = "${PRICE}"
description = "A paid test route"
`;
    await writeFile(join(dir, "node.toml"), config);
    const node = spawn(join(BIN, "x402-node"), ["--config", join(dir, "node.toml")], {
      cwd: dir,
      stdio: ["ignore", "ignore", process.env.X402_TS_NODE_LOG ? "inherit" : "ignore"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    children.push(node);
    await until(
      "the node",
      async () => {
        if (node.exitCode !== null) throw new Error(`x402-node exited with ${node.exitCode} (X402_TS_NODE_LOG=1 shows why)`);
        const r = await fetch(`${url}/healthz`);
        return r.ok ? true : undefined;
      },
      30_000,
    ).catch((e) => {
      if (node.exitCode !== null) throw new Error(`x402-node exited with ${node.exitCode} (X402_TS_NODE_LOG=1 shows why)`);
      throw e;
    });
    const chain = defineChain({
      id: 31337,
      name: "anvil",
      nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
      rpcUrls: { default: { http: [rpc] } },
    });
    const publicClient = createPublicClient({ chain, transport: http(rpc) }) as PublicClient;
    return {
      rpc,
      chain,
      network: "eip155:31337",
      publicClient,
      contract,
      token,
      provider: accounts[0]!.address,
      accounts,
      wallet: (account) => createWalletClient({ account, chain, transport: http(rpc) }),
      url,
      upstream,
      channels: async () => {
        const r = await fetch(`${url}/admin/channels`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
        if (!r.ok) throw new Error(`/admin/channels: ${r.status} ${await r.text()}`);
        return (await r.json()) as { id: string; payer: string; nonce: number; charged: string; deposit: string }[];
      },
      stop: cleanup,
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
