#!/usr/bin/env bash
# Installs Debian packages for CI without letting them start a daemon (there
# is no init system to speak of here; the CI scripts start each server from
# their own configuration and stop it by pid). Usage: apt-install.sh PKG...
set -euo pipefail
(($#)) || exit 0
export DEBIAN_FRONTEND=noninteractive
made_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
