# Sourced by the project's scripts: puts the npm-installed Foundry binaries on PATH.
# shellcheck shell=bash
X402_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export X402_ROOT
for tool in forge anvil cast; do
    PATH="$X402_ROOT/node_modules/@foundry-rs/$tool-linux-amd64/bin:$PATH"
done
export PATH
