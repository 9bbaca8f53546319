// A real anvil per test file, with the v2 PaymentChannel and the test stablecoin deployed from forge's artifacts.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
  parseAbi,
  type Address,
  type Hex,
  type PublicClient,
} from "viem";
import { mnemonicToAccount, type HDAccount } from "viem/accounts";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const ANVIL = join(ROOT, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");

/** anvil's default dev accounts. */
const MNEMONIC = "test test test test test test test test test test test junk";

function artifact(name: string): { abi: unknown[]; bytecode: Hex } {
  const path = join(ROOT, "out", `${name}.sol`, `${name}.json`);
  if (!existsSync(path)) {
    execFileSync("bash", ["-c", "source scripts/env.sh && forge build"], { cwd: ROOT, stdio: "inherit" });
  }
  const json = JSON.parse(readFileSync(path, "utf8")) as { abi: unknown[]; bytecode: { object: Hex } };
  return { abi: json.abi, bytecode: json.bytecode.object };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

export const stablecoinAbi = parseAbi([
  "function mint(address to, uint256 amount)",
  "function balanceOf(address) view returns (uint256)",
]);

export interface Devnet {
  rpc: string;
  chain: ReturnType<typeof defineChain>;
  publicClient: PublicClient;
  contract: Address;
  token: Address;
  channelAbi: unknown[];
  accounts: HDAccount[];
  wallet(account: HDAccount): ReturnType<typeof createWalletClient>;
  stop(): Promise<void>;
}

export async function startDevnet(): Promise<Devnet> {
  const pc = artifact("PaymentChannel");
  const coin = artifact("TestStablecoin");
  const port = await freePort();
  const child: ChildProcess = spawn(ANVIL, ["--port", String(port), "--host", "127.0.0.1", "--silent", "--hardfork", "prague", "--accounts", "40"], {
    stdio: "ignore",
  });
  const rpc = `http://127.0.0.1:${port}`;
  const chain = defineChain({
    id: 31337,
    name: "anvil",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpc] } },
  });
  const publicClient = createPublicClient({ chain, transport: http(rpc) }) as PublicClient;
  for (let i = 0; ; i++) {
    try {
      await publicClient.getChainId();
      break;
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const accounts = Array.from({ length: 40 }, (_, i) => mnemonicToAccount(MNEMONIC, { addressIndex: i }));
  const wallet = (account: HDAccount) => createWalletClient({ account, chain, transport: http(rpc) });
  const deployer = wallet(accounts[0]!);
  const deploy = async (a: { abi: unknown[]; bytecode: Hex }, args: unknown[]) => {
    const hash = await deployer.deployContract({ abi: a.abi as never, bytecode: a.bytecode, args: args as never, account: accounts[0]!, chain });
    const r = await publicClient.waitForTransactionReceipt({ hash });
    if (!r.contractAddress) throw new Error("deploy failed");
    return r.contractAddress;
  };
  const contract = await deploy(pc, [60, 30 * 24 * 3600]);
  const token = await deploy(coin, []);
  return {
    rpc,
    chain,
    publicClient,
    contract,
    token,
    channelAbi: pc.abi,
    accounts,
    wallet,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

export async function mint(d: Devnet, to: Address, amount: bigint) {
  const hash = await d.wallet(d.accounts[0]!).writeContract({
    address: d.token,
    abi: stablecoinAbi,
    functionName: "mint",
    args: [to, amount],
    account: d.accounts[0]!,
    chain: d.chain,
  });
  await d.publicClient.waitForTransactionReceipt({ hash });
}
