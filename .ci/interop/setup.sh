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
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # start.sh runs postfix from its own config directory.
  bash "$(dirname "$0")/../apt-install.sh" "${need_apt[@]}"
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
