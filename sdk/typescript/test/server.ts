// A small HTTP server that speaks the gateway's wire format (protocol/src/wire.rs) and checks vouchers the way the
// node does: the channel from the chain (ChannelOpened, getChannel), the signer's EIP-712 signature (with viem, not
// with the package under test), nonce above the latest, amount covering what was charged plus the price, within the
// deposit; corrective 402s carry the channel state and the client's latest signature.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { getAddress, parseAbiItem, parseSignature, recoverTypedDataAddress, zeroAddress, type Address, type Hex } from "viem";
import { PaymentPayloadV2Schema } from "@x402/core/schemas";
import { SCHEME } from "../src/constants.js";
import type { Devnet } from "./anvil.js";

interface Known {
  payer: Address;
  signer: Address;
  payee: Address;
  token: Address;
  deposit: bigint;
}

interface State {
  nonce: bigint;
  cumulative: bigint;
  charged: bigint;
  signature?: Hex;
  session?: { token: Hex; uses: number };
}

export interface TestServerOptions {
  payee: Address;
  price: bigint;
  maxCreditWindow?: number;
  minDeposit?: bigint;
  /** Corrupts the signature carried in corrective 402s (an unverifiable state). */
  tamper?: "signature" | "inflate" | "receipt";
}

export class TestServer {
  readonly channels = new Map<string, State>();
  /** Channels the server treats as closed (`channel_closed`). */
  readonly closed = new Set<string>();
  private readonly known = new Map<string, Known>();
  private server!: Server;
  url = "";
  httpRequests = 0;
  paidRequests = 0;
  vouchers = 0;
  sessionsUsed = 0;
  relayed = 0;
  schemaFailures: string[] = [];
  refusals: string[] = [];

  constructor(
    readonly d: Devnet,
    readonly opts: TestServerOptions,
  ) {}

  async start() {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((e) => {
        res.statusCode = 500;
        res.end(String(e));
      });
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this;
  }

  async stop() {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  requirements(state?: { channelId: Hex; s: State; deposit: bigint }) {
    const extra: Record<string, unknown> = {
      contract: this.d.contract,
      domain: { name: "x402 Payment Channel", version: "2" },
      name: "Test Stablecoin",
      version: "1",
      minChallengePeriod: 3600,
      minDeposit: String(this.opts.minDeposit ?? 10_000n),
      pricing: "exact",
    };
    if (this.opts.maxCreditWindow) extra.maxCreditWindow = this.opts.maxCreditWindow;
    if (state) {
      let signature = state.s.signature;
      let cumulative = state.s.cumulative;
      let nonce = state.s.nonce;
      if (this.opts.tamper === "signature" && signature) {
        signature = (signature.slice(0, 10) + (signature[10] === "a" ? "b" : "a") + signature.slice(11)) as Hex;
      }
      if (this.opts.tamper === "inflate") {
        nonce += 100n;
        cumulative += 1_000_000n;
      }
      extra.channel = {
        channelId: state.channelId,
        nonce: Number(nonce),
        cumulativeAmount: String(cumulative),
        charged: String(state.s.charged),
        deposit: String(state.deposit),
        ...(signature ? { signature } : {}),
      };
    }
    return {
      scheme: SCHEME,
      network: "eip155:31337",
      amount: String(this.opts.price),
      asset: this.d.token,
      payTo: this.opts.payee,
      maxTimeoutSeconds: 10,
      extra,
    };
  }

  private send402(res: ServerResponse, path: string, error?: string, state?: { channelId: Hex; s: State; deposit: bigint }) {
    if (error) this.refusals.push(error);
    const body = {
      x402Version: 2,
      ...(error ? { error } : {}),
      resource: { url: path },
      accepts: [this.requirements(state)],
    };
    const json = JSON.stringify(body);
    res.writeHead(402, {
      "content-type": "application/json",
      "payment-required": Buffer.from(json).toString("base64"),
      "cache-control": "no-store",
    });
    res.end(json);
  }

  private paid(res: ServerResponse, channelId: Hex, s: State, known: Known) {
    this.paidRequests++;
    const settlement = {
      success: true,
      transaction: "",
      network: "eip155:31337",
      payer: known.payer,
      extra: {
        channelId,
        nonce: Number(s.nonce),
        cumulativeAmount: String(s.cumulative),
        charged: String(this.opts.price),
        totalCharged: String(this.opts.tamper === "receipt" ? s.cumulative + 1n : s.charged),
        ...(s.session && s.session.uses > 0 ? { session: s.session } : {}),
      },
    };
    res.writeHead(200, {
      "content-type": "application/json",
      "payment-response": Buffer.from(JSON.stringify(settlement)).toString("base64"),
    });
    res.end(JSON.stringify({ ok: true, n: this.paidRequests }));
  }

  private async channel(channelId: Hex): Promise<Known | undefined> {
    const cached = this.known.get(channelId);
    if (cached) return cached;
    const logs = await this.d.publicClient.getLogs({
      address: this.d.contract,
      event: parseAbiItem(
        "event ChannelOpened(bytes32 indexed channelId, address indexed payer, address indexed payee, address token, address signer, uint32 challengePeriod, bytes32 salt, uint256 deposit)",
      ),
      args: { channelId },
      fromBlock: 0n,
    });
    const log = logs[0];
    if (!log) return undefined;
    const a = log.args as { payer: Address; payee: Address; token: Address; signer: Address };
    const known: Known = {
      payer: a.payer,
      payee: a.payee,
      token: a.token,
      signer: a.signer === zeroAddress ? a.payer : a.signer,
      deposit: await this.deposit(channelId),
    };
    this.known.set(channelId, known);
    return known;
  }

  private async deposit(channelId: Hex): Promise<bigint> {
    const c = (await this.d.publicClient.readContract({
      address: this.d.contract,
      abi: this.d.channelAbi as never,
      functionName: "getChannel",
      args: [channelId],
    } as never)) as { deposit: bigint };
    return c.deposit;
  }

  /** The node's gasless-open relay (protocol/src/open.rs), submitting `openWithPermit` with the server's own key. */
  private async relay(req: IncomingMessage, res: ServerResponse) {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
      params: { payer: Address; payee: Address; token: Address; signer: Address; challengePeriod: number; salt: Hex };
      deposit: string;
      authorization: { kind: string; deadline: number; permitSignature: Hex; openSignature: Hex };
    };
    const { params: p, authorization: auth } = body;
    if (auth.kind !== "permit") throw new Error("only permit opens here");
    const sig = parseSignature(auth.permitSignature);
    const relayer = this.d.accounts[1]!;
    const params = { payer: p.payer, payee: p.payee, token: p.token, signer: p.signer, challengePeriod: p.challengePeriod, salt: p.salt };
    try {
      const hash = await this.d.wallet(relayer).writeContract({
        address: this.d.contract,
        abi: this.d.channelAbi as never,
        functionName: "openWithPermit",
        args: [params, BigInt(body.deposit), BigInt(auth.deadline), Number(sig.v), sig.r, sig.s, auth.openSignature],
        account: relayer,
        chain: this.d.chain,
      } as never);
      const receipt = await this.d.publicClient.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error("openWithPermit reverted");
      const channelId = receipt.logs[receipt.logs.length - 1]!.topics[1]!;
      this.relayed++;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ channelId, transactionHash: hash, deposit: body.deposit }));
    } catch (e) {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: String(e).slice(0, 300) }));
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    if (req.method === "POST" && req.url === "/x402/open") return this.relay(req, res);
    this.httpRequests++;
    // Answer out of order now and then, as a real server under load would.
    await new Promise((r) => setTimeout(r, Math.random() * 3));
    const path = req.url ?? "/";
    const price = this.opts.price;
    const session = req.headers["payment-session"];
    if (typeof session === "string") {
      const [channelId, token] = session.split(":") as [Hex, Hex];
      const s = this.channels.get(channelId);
      const known = this.known.get(channelId);
      if (!s || !known || !s.session || s.session.token !== token || s.session.uses <= 0 || s.charged + price > s.cumulative) {
        return this.send402(res, path, "session_invalid", s && known ? { channelId, s, deposit: known.deposit } : undefined);
      }
      s.session.uses--;
      s.charged += price;
      this.sessionsUsed++;
      return this.paid(res, channelId, s, known);
    }
    const header = req.headers["payment-signature"];
    if (typeof header !== "string") return this.send402(res, path);
    let payload: {
      x402Version: number;
      accepted?: {
        scheme: string;
        network: string;
        asset?: string;
        amount?: string;
        payTo?: string;
        maxTimeoutSeconds?: number;
        extra?: { contract?: string; domain?: unknown };
      };
      payload: { channelId: Hex; nonce: number; cumulativeAmount: string; signature: Hex };
    };
    try {
      payload = JSON.parse(Buffer.from(header, "base64").toString("utf8"));
    } catch {
      return this.send402(res, path, "invalid_payload");
    }
    // The official SDK's own schema accepts what the client sent.
    const checked = PaymentPayloadV2Schema.safeParse(payload);
    if (!checked.success) {
      this.schemaFailures.push(checked.error.message);
      return this.send402(res, path, "invalid_payload");
    }
    const a = payload.accepted;
    // The full `accepted` object is echoed (x402 v2).
    if (
      !a ||
      a.scheme !== SCHEME ||
      a.amount === undefined ||
      a.payTo === undefined ||
      a.maxTimeoutSeconds === undefined ||
      a.extra?.contract !== this.d.contract ||
      a.extra.domain === undefined
    ) {
      return this.send402(res, path, "invalid_payload");
    }
    if (a.network !== "eip155:31337") return this.send402(res, path, "invalid_network");
    const v = payload.payload;
    const known = await this.channel(v.channelId);
    if (!known) return this.send402(res, path, "channel_unknown");
    if (this.closed.has(v.channelId)) return this.send402(res, path, "channel_closed");
    if (getAddress(known.payee) !== getAddress(this.opts.payee) || getAddress(known.token) !== getAddress(this.d.token)) {
      return this.send402(res, path, "channel_mismatch");
    }
    const nonce = BigInt(v.nonce);
    const cumulative = BigInt(v.cumulativeAmount);
    if (cumulative > known.deposit) {
      known.deposit = await this.deposit(v.channelId);
      if (cumulative > known.deposit) return this.send402(res, path, "insufficient_deposit");
    }
    let signer: Address;
    try {
      signer = await recoverTypedDataAddress({
        domain: { name: "x402 Payment Channel", version: "2", chainId: 31337, verifyingContract: this.d.contract },
        types: {
          Voucher: [
            { name: "channelId", type: "bytes32" },
            { name: "nonce", type: "uint64" },
            { name: "cumulativeAmount", type: "uint256" },
          ],
        },
        primaryType: "Voucher",
        message: { channelId: v.channelId, nonce, cumulativeAmount: cumulative },
        signature: v.signature,
      });
    } catch {
      return this.send402(res, path, "invalid_signature");
    }
    if (getAddress(signer) !== getAddress(known.signer)) return this.send402(res, path, "invalid_signature");
    // From here on no await: the check and the update are one step, as in the node's store.
    let s = this.channels.get(v.channelId);
    if (!s) this.channels.set(v.channelId, (s = { nonce: 0n, cumulative: 0n, charged: 0n }));
    const state = { channelId: v.channelId, s, deposit: known.deposit };
    if (nonce <= s.nonce) return this.send402(res, path, "nonce_too_low", state);
    if (cumulative < s.charged + price) return this.send402(res, path, "amount_below_price", state);
    s.nonce = nonce;
    s.cumulative = cumulative;
    s.signature = v.signature;
    s.charged += price;
    this.vouchers++;
    const ahead = (cumulative - s.charged) / price;
    const window = BigInt(this.opts.maxCreditWindow ?? 1) - 1n;
    const uses = Number(ahead < window ? ahead : window);
    s.session = uses > 0 ? { token: `0x${randomBytes(32).toString("hex")}` as Hex, uses } : undefined;
    return this.paid(res, v.channelId, s, known);
  }
}
