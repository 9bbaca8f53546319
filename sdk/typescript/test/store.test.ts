// One conformance suite for every ChannelStore backend, plus the file store's own promises.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { FileChannelStore, MemoryChannelStore, type ChannelRecord, type ChannelStore } from "../src/index.js";

function record(key: string, nonce: number): ChannelRecord {
  return {
    key,
    channelId: `0x${"ab".repeat(32)}`,
    chainId: 31337,
    contract: `0x${"11".repeat(20)}`,
    params: {
      payer: `0x${"22".repeat(20)}`,
      payee: `0x${"33".repeat(20)}`,
      token: `0x${"44".repeat(20)}`,
      signer: `0x${"00".repeat(20)}`,
      challengePeriod: 3600,
      salt: `0x${"55".repeat(32)}`,
    },
    deposit: "1000000",
    nonce: String(nonce),
    cumulative: String(nonce * 1000),
    maxSigned: String(nonce * 1000),
    spent: "0",
    status: "open",
  };
}

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempPath() {
  const d = await mkdtemp(join(tmpdir(), "x402-store-"));
  dirs.push(d);
  return join(d, "sub", "channels.json");
}

const backends: Array<[string, () => Promise<ChannelStore>]> = [
  ["memory", async () => new MemoryChannelStore()],
  ["file", async () => new FileChannelStore(await tempPath())],
];

for (const [name, make] of backends) {
  describe(`ChannelStore conformance: ${name}`, () => {
    it("puts, gets, lists, overwrites and deletes", async () => {
      const s = await make();
      assert.equal(await s.get("a"), undefined);
      assert.deepEqual(await s.list(), []);
      await s.put(record("a", 1));
      await s.put(record("b", 2));
      assert.deepEqual(await s.get("a"), record("a", 1));
      await s.put(record("a", 3));
      assert.deepEqual(await s.get("a"), record("a", 3));
      assert.deepEqual((await s.list()).map((r) => r.key).sort(), ["a", "b"]);
      await s.delete("a");
      await s.delete("missing");
      assert.equal(await s.get("a"), undefined);
      assert.deepEqual((await s.list()).map((r) => r.key), ["b"]);
    });

    it("hands out copies: mutating a result does not change the store", async () => {
      const s = await make();
      const r = record("a", 1);
      await s.put(r);
      r.nonce = "99";
      const got = (await s.get("a"))!;
      assert.equal(got.nonce, "1");
      got.nonce = "98";
      assert.equal((await s.get("a"))!.nonce, "1");
    });

    it("keeps every write of concurrent puts", async () => {
      const s = await make();
      await Promise.all(Array.from({ length: 50 }, (_, i) => s.put(record(`k${i}`, i))));
      assert.equal((await s.list()).length, 50);
    });
  });
}

describe("FileChannelStore", () => {
  it("survives a restart and leaves no temporary file", async () => {
    const path = await tempPath();
    await new FileChannelStore(path).put(record("a", 7));
    assert.deepEqual(await new FileChannelStore(path).get("a"), record("a", 7));
    await assert.rejects(readFile(`${path}.tmp`));
  });

  it("refuses a file that is not a channel store instead of starting empty", async () => {
    const path = await tempPath();
    await new FileChannelStore(path).put(record("a", 1));
    await writeFile(path, JSON.stringify({ version: 9, channels: [] }));
    await assert.rejects(new FileChannelStore(path).get("a"), /not a channel store/);
    await writeFile(path, "{ truncated");
    await assert.rejects(new FileChannelStore(path).get("a"), SyntaxError);
  });
});
