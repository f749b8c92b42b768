#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium + chromedriver (the review
# page's browser test), the CNCF distribution registry (publish/pull tests), and Podman with
# runc, catatonit (--init) and mmdebstrap (the training image, built and run without a Docker
# daemon or an image registry: `make test-image`).
# Installs the missing ones, quietly; a no-op once they are there. Where that is
# impossible (no apt-get, not root, no network) it says so once and the tests that need
# them skip with their reason. In CI (CI=true) a missing package is an error instead: CI
# must run those tests, not skip them.
set -uo pipefail
give_up() {
  echo "$1" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
}
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v chromedriver >/dev/null 2>&1 || want+=(chromium-driver)
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || want+=(docker-registry)
command -v podman >/dev/null 2>&1 || want+=(podman)
command -v runc >/dev/null 2>&1 || want+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || want+=(mmdebstrap)
[ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || want+=(catatonit)
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  give_up "note: ${want[*]} not installed (needs root and apt-get); the tests that drive them will skip"
fi
echo "installing Debian packages for the tests: ${want[*]}" >&2
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"; } \
  >/dev/null 2>&1 || give_up "warning: could not install ${want[*]}; the tests that drive them will skip"
# Debian starts the registry as a service on install; the tests start their own on loopback.
if [[ " ${want[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
exit 0
