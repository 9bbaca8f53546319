//! anvil's test cheats: mining, time travel, snapshots (for reorgs) and the mempool.

use alloy::{primitives::B256, providers::Provider};

use crate::{Error, Result};

/// Sends the anvil-only RPC `method`.
async fn cheat<P>(provider: &impl Provider, method: &'static str, params: P) -> Result<serde_json::Value>
where
    P: serde::Serialize + Clone + std::fmt::Debug + Send + Sync + Unpin + 'static,
{
    provider.raw_request(method.into(), params).await.map_err(|e| Error::chain(method, e))
}

/// Mines `blocks` blocks.
pub async fn mine(provider: &impl Provider, blocks: u64) -> Result<()> {
    cheat(provider, "anvil_mine", (blocks,)).await.map(drop)
}

/// Moves the clock forward by `seconds` and mines a block at the new time.
pub async fn increase_time(provider: &impl Provider, seconds: u64) -> Result<()> {
    cheat(provider, "evm_increaseTime", (seconds,)).await?;
    mine(provider, 1).await
}

/// The timestamp of the latest block.
pub async fn now(provider: &impl Provider) -> Result<u64> {
    let block = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .map_err(|e| Error::chain("eth_getBlockByNumber", e))?
        .ok_or_else(|| Error::chain("eth_getBlockByNumber", "no latest block"))?;
    Ok(block.header.timestamp)
}

/// Takes a snapshot of the chain; [`revert`] returns to it, disconnecting every block mined
/// since, which is how tests make reorgs.
pub async fn snapshot(provider: &impl Provider) -> Result<String> {
    let id = cheat(provider, "evm_snapshot", ()).await?;
    id.as_str().map(str::to_owned).ok_or_else(|| Error::chain("evm_snapshot", format!("unexpected id {id}")))
}

/// Reverts to a snapshot taken by [`snapshot`].
pub async fn revert(provider: &impl Provider, id: &str) -> Result<()> {
    let ok = cheat(provider, "evm_revert", (id.to_owned(),)).await?;
    if ok != serde_json::Value::Bool(true) {
        return Err(Error::chain("evm_revert", format!("reverting to {id} failed: {ok}")));
    }
    Ok(())
}

/// Turns automatic mining of each transaction on or off.
pub async fn set_automine(provider: &impl Provider, on: bool) -> Result<()> {
    cheat(provider, "evm_setAutomine", (on,)).await.map(drop)
}

/// Removes a pending transaction from the mempool, as a node that dropped it would.
pub async fn drop_transaction(provider: &impl Provider, hash: B256) -> Result<()> {
    cheat(provider, "anvil_dropTransaction", (hash,)).await.map(drop)
}

/// Removes every pending transaction from the mempool.
pub async fn drop_all_transactions(provider: &impl Provider) -> Result<()> {
    cheat(provider, "anvil_dropAllTransactions", ()).await.map(drop)
}

/// Sets the base fee of the next block (a gas-price spike, when raised far above the current
/// one; empty blocks after it bring it down by 1/8 each).
pub async fn set_next_base_fee(provider: &impl Provider, wei: u128) -> Result<()> {
    cheat(provider, "anvil_setNextBlockBaseFeePerGas", (alloy::primitives::U256::from(wei),)).await.map(drop)
}

/// Mines a block every `seconds` (0: stop), whether or not transactions are pending.
pub async fn set_interval_mining(provider: &impl Provider, seconds: u64) -> Result<()> {
    cheat(provider, "evm_setIntervalMining", (seconds,)).await.map(drop)
}
