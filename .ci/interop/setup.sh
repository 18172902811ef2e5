#!/usr/bin/env bash
# Installs what the interop servers need: Debian's postfix (no configuration:
# start.sh writes its own config under a scratch directory), openssl, and
# aiosmtpd from PyPI. Idempotent: a second run only checks and returns.
set -euo pipefail

AIOSMTPD_VERSION=1.4.6
PYTHON=${PYTHON:-python3}

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
if ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'; then
  need_apt+=(postfix)
fi

if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # Never let the package start a daemon (there is no init system to speak of
  # here, and start.sh runs postfix from its own config directory).
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi

# The package's own instance stays unused; make sure it is not running.
if [[ -f /etc/postfix/main.cf ]] && /usr/sbin/postfix status >/dev/null 2>&1; then
  /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi

if ! "$PYTHON" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$AIOSMTPD_VERSION')" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "aiosmtpd==$AIOSMTPD_VERSION"
fi

echo "interop setup: $(/usr/sbin/postconf -d -h mail_version 2>/dev/null | sed 's/^/postfix /'), $(openssl version | cut -d' ' -f1-2), aiosmtpd $("$PYTHON" -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
