//! Creation bytecode from forge's build output (`out/<File>.sol/<Contract>.json`).

use std::path::{Path, PathBuf};

use alloy::{primitives::Address, providers::DynProvider, sol_types::SolValue};

use crate::{Error, Result, chain::deploy};

/// The challenge period bounds of the `PaymentChannel` deployments made here, in seconds:
/// one hour to 30 days (the contract's constructor arguments).
pub const CHALLENGE_PERIODS: (u32, u32) = (3600, 30 * 86_400);

/// A directory of forge artifacts. The default is the workspace's `out/` (`forge build`
/// writes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifacts {
    dir: PathBuf,
}

impl Default for Artifacts {
    fn default() -> Self {
        Self::new(crate::workspace_root().join("out"))
    }
}

impl Artifacts {
    /// Artifacts in `dir` (forge's `out` directory).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The creation bytecode of `contract`, compiled from the source file `file` (for example
    /// `("PaymentChannel.sol", "PaymentChannel")`). A missing artifact is
    /// [`Error::ArtifactMissing`], which says to run `forge build`.
    pub fn creation_code(&self, file: &str, contract: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(file).join(format!("{contract}.json"));
        let text = std::fs::read_to_string(&path)
            .map_err(|source| Error::ArtifactMissing { path: path.clone(), source })?;
        let invalid = |reason: String| Error::ArtifactInvalid { path: path.clone(), reason };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let hex = json["bytecode"]["object"].as_str().ok_or_else(|| invalid("no bytecode.object".into()))?;
        let code = alloy::hex::decode(hex).map_err(|e| invalid(format!("bytecode: {e}")))?;
        if code.is_empty() {
            return Err(invalid("empty bytecode (an interface or abstract contract?)".into()));
        }
        Ok(code)
    }

    /// Deploys `PaymentChannel` with challenge periods between `periods.0` and `periods.1`
    /// seconds.
    pub async fn deploy_channel(&self, chain: &DynProvider, periods: (u32, u32)) -> Result<Address> {
        let code = self.creation_code("PaymentChannel.sol", "PaymentChannel")?;
        deploy(chain, code, &periods.abi_encode_params()).await
    }

    /// Deploys the test stablecoin (`TestStablecoin`: 6 decimals, EIP-2612 and EIP-3009, anyone
    /// may mint).
    pub async fn deploy_stablecoin(&self, chain: &DynProvider) -> Result<Address> {
        deploy(chain, self.creation_code("TestStablecoin.sol", "TestStablecoin")?, &[]).await
    }

    /// Checks that the contracts the devnet deploys are built, before anything is started.
    pub fn check(&self) -> Result<()> {
        self.creation_code("PaymentChannel.sol", "PaymentChannel")?;
        self.creation_code("TestStablecoin.sol", "TestStablecoin")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_broken_artifact_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path());
        let err = artifacts.check().unwrap_err();
        assert!(matches!(err, Error::ArtifactMissing { .. }), "{err}");
        assert!(err.to_string().contains("run `forge build`"), "{err}");

        let file = dir.path().join("PaymentChannel.sol");
        std::fs::create_dir_all(&file).unwrap();
        for (text, why) in [
            ("not json", "expected"),
            (r#"{"bytecode": {}}"#, "no bytecode.object"),
            (r#"{"bytecode": {"object": "0xzz"}}"#, "bytecode"),
            (r#"{"bytecode": {"object": "0x"}}"#, "empty bytecode"),
        ] {
            std::fs::write(file.join("PaymentChannel.json"), text).unwrap();
            let err = artifacts.creation_code("PaymentChannel.sol", "PaymentChannel").unwrap_err();
            assert!(matches!(err, Error::ArtifactInvalid { .. }) && err.to_string().contains(why), "{err}");
        }
        std::fs::write(file.join("PaymentChannel.json"), r#"{"bytecode": {"object": "0x6001"}}"#).unwrap();
        assert_eq!(artifacts.creation_code("PaymentChannel.sol", "PaymentChannel").unwrap(), [0x60, 0x01]);
    }

    #[test]
    fn the_default_is_the_workspace_out_directory() {
        assert_eq!(Artifacts::default().dir(), crate::workspace_root().join("out"));
    }
}
