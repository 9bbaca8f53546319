import { mkdir, open, readFile, rename } from "node:fs/promises";
import { dirname } from "node:path";
import type { Address, Hex } from "viem";
import type { ChannelParams } from "./voucher.js";

/**
 * What the client remembers of one channel. Amounts are decimal strings so that a record is plain JSON.
 * A record is written (and, for the file store, fsynced) BEFORE the voucher it describes is sent: a client
 * that crashes after sending never signs the same nonce twice for a different amount.
 */
export interface ChannelRecord {
  /**
   * `network|contract|payee|asset`, lowercase: one open channel per provider, token and contract. A retired
   * channel is kept under `<that key>#<channelId>` with status `closed`.
   */
  key: string;
  channelId: Hex;
  chainId: number;
  contract: Address;
  params: ChannelParams;
  /** What the contract credited, as far as the client knows. */
  deposit: string;
  /** The latest signed voucher's nonce (0: none yet). */
  nonce: string;
  /** The amount the next voucher builds on (the latest signed amount, or the node's `charged` after a rebase). */
  cumulative: string;
  /** The highest cumulative amount ever signed on the channel: what the provider could claim at most. */
  maxSigned: string;
  /** What the node reported charged in total. */
  spent: string;
  /** The latest signed voucher's signature. */
  signature?: Hex;
  /** `open` until the node reports the channel closing or closed. */
  status: "open" | "closed";
}

/** A pluggable persistence for channel records (LDK style: small key-value operations). */
export interface ChannelStore {
  get(key: string): Promise<ChannelRecord | undefined>;
  /** Durable when the promise resolves. */
  put(record: ChannelRecord): Promise<void>;
  delete(key: string): Promise<void>;
  list(): Promise<ChannelRecord[]>;
}

/** Keeps records in memory (lost with the process: the provider may then hold vouchers the client forgot). */
export class MemoryChannelStore implements ChannelStore {
  private readonly records = new Map<string, ChannelRecord>();
  async get(key: string) {
    const r = this.records.get(key);
    return r && structuredClone(r);
  }
  async put(record: ChannelRecord) {
    this.records.set(record.key, structuredClone(record));
  }
  async delete(key: string) {
    this.records.delete(key);
  }
  async list() {
    return [...this.records.values()].map((r) => structuredClone(r));
  }
}

/**
 * Keeps all records in one JSON file, rewritten atomically (temporary file, fsync, rename) on every change.
 * Writes are serialised within the process; one file must not be shared by two processes.
 */
export class FileChannelStore implements ChannelStore {
  private cache: Map<string, ChannelRecord> | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly path: string) {}

  private async load(): Promise<Map<string, ChannelRecord>> {
    if (this.cache) return this.cache;
    let records: ChannelRecord[] = [];
    try {
      const parsed = JSON.parse(await readFile(this.path, "utf8")) as { version: number; channels: ChannelRecord[] };
      if (parsed.version !== 1 || !Array.isArray(parsed.channels)) {
        throw new Error(`${this.path}: not a channel store (version ${String(parsed.version)})`);
      }
      records = parsed.channels;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    this.cache = new Map(records.map((r) => [r.key, r]));
    return this.cache;
  }

  private async flush(records: Map<string, ChannelRecord>) {
    await mkdir(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.tmp`;
    const fh = await open(tmp, "w", 0o600);
    try {
      await fh.writeFile(JSON.stringify({ version: 1, channels: [...records.values()] }, null, 2));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.path);
    const dir = await open(dirname(this.path), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.queue.then(f, f);
    this.queue = next.catch(() => undefined);
    return next;
  }

  get(key: string) {
    return this.serial(async () => {
      const r = (await this.load()).get(key);
      return r && structuredClone(r);
    });
  }
  put(record: ChannelRecord) {
    return this.serial(async () => {
      const records = await this.load();
      records.set(record.key, structuredClone(record));
      await this.flush(records);
    });
  }
  delete(key: string) {
    return this.serial(async () => {
      const records = await this.load();
      if (records.delete(key)) await this.flush(records);
    });
  }
  list() {
    return this.serial(async () => [...(await this.load()).values()].map((r) => structuredClone(r)));
  }
}
