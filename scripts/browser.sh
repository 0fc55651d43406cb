#!/usr/bin/env bash
# Installs what the console's browser test drives: Debian's chromium and chromium-driver.
# Does nothing when chromedriver is already on the PATH.
set -euo pipefail
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "installing chromium and chromium-driver (for the console's browser test)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
