//! Anvil's test cheats: mining, time travel, snapshots (for reorgs) and the mempool.

use alloy::{primitives::B256, providers::Provider};

/// Mines `blocks` blocks.
pub async fn mine(provider: &impl Provider, blocks: u64) -> eyre::Result<()> {
    let _: serde_json::Value = provider.raw_request("anvil_mine".into(), (blocks,)).await?;
    Ok(())
}

/// Moves the clock forward by `seconds` and mines a block at the new time.
pub async fn increase_time(provider: &impl Provider, seconds: u64) -> eyre::Result<()> {
    let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), (seconds,)).await?;
    mine(provider, 1).await
}

/// The timestamp of the latest block.
pub async fn now(provider: &impl Provider) -> eyre::Result<u64> {
    let block = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await?
        .ok_or_else(|| eyre::eyre!("no latest block"))?;
    Ok(block.header.timestamp)
}

/// Takes a snapshot of the chain; [`revert`] returns to it, disconnecting every block mined
/// since, which is how the tests make reorgs.
pub async fn snapshot(provider: &impl Provider) -> eyre::Result<String> {
    let id: serde_json::Value = provider.raw_request("evm_snapshot".into(), ()).await?;
    id.as_str().map(str::to_owned).ok_or_else(|| eyre::eyre!("unexpected snapshot id {id}"))
}

/// Reverts to a snapshot taken by [`snapshot`].
pub async fn revert(provider: &impl Provider, id: &str) -> eyre::Result<()> {
    let ok: bool = provider.raw_request("evm_revert".into(), (id,)).await?;
    eyre::ensure!(ok, "evm_revert({id}) failed");
    Ok(())
}

/// Turns automatic mining of each transaction on or off.
pub async fn set_automine(provider: &impl Provider, on: bool) -> eyre::Result<()> {
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (on,)).await?;
    Ok(())
}

/// Removes a pending transaction from the mempool, as a node that dropped it would.
pub async fn drop_transaction(provider: &impl Provider, hash: B256) -> eyre::Result<()> {
    let _: serde_json::Value = provider.raw_request("anvil_dropTransaction".into(), (hash,)).await?;
    Ok(())
}

/// Removes every pending transaction from the mempool.
pub async fn drop_all_transactions(provider: &impl Provider) -> eyre::Result<()> {
    let _: serde_json::Value = provider.raw_request("anvil_dropAllTransactions".into(), ()).await?;
    Ok(())
}
