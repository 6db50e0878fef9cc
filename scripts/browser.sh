#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_browser.py: Playwright drives it; Playwright's own
# browser downloads do not reach here). Nothing to do where it is installed; a note where it cannot be.
set -uo pipefail
command -v chromium >/dev/null && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } ||
    echo "scripts/browser.sh: chromium did not install: the browser tests will be skipped" >&2
else
  echo "scripts/browser.sh: no chromium and no root apt-get: the browser tests will be skipped" >&2
fi
exit 0
