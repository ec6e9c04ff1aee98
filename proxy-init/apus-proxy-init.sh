#!/bin/sh
# apus-proxy-init: installs the iptables rules that send a meshed pod's TCP traffic through its proxy.
#
# Runs once per pod, in the `linkerd-init` init container (NET_ADMIN and NET_RAW only), before any other container.
# The rules follow Linkerd's proxy-init (same chain names, so Linkerd's tooling and docs apply):
#   inbound:  PREROUTING -> PROXY_INIT_REDIRECT: ignored ports and subnets RETURN, all other TCP is REDIRECTed to
#             the proxy's inbound port;
#   outbound: OUTPUT -> PROXY_INIT_OUTPUT: the proxy's own UID (its upstream connections) and loopback RETURN,
#             ignored ports and subnets RETURN, all other TCP is REDIRECTed to the proxy's outbound port.
# The proxy's admin and control ports belong in --inbound-ports-to-ignore so kubelet probes reach them directly.
#
# Usage: apus-proxy-init.sh --incoming-proxy-port PORT --outgoing-proxy-port PORT --proxy-uid UID
#            [--inbound-ports-to-ignore LIST] [--outbound-ports-to-ignore LIST] [--subnets-to-ignore CIDRS]
#            [--dry-run]
# LIST is comma-separated ports and ranges (`4190,4191,8000-8010`); CIDRS is comma-separated IPv4 CIDRs.
# --dry-run prints the iptables-restore input instead of applying it (the tests compare it as text).
# IPTABLES_RESTORE / IPTABLES_SAVE override the binaries (default: the nft variants when present, as Linkerd).
set -eu

die() {
    echo "apus-proxy-init: $*" >&2
    exit 2
}

is_port() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
    esac
    [ "${#1}" -le 5 ] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

# Checks a port list and prints it with ranges in iptables syntax (8000:8010), one entry per line.
port_list() {
    option=$1
    list=$2
    old_ifs=$IFS
    IFS=,
    for entry in $list; do
        entry=$(printf '%s' "$entry" | tr -d ' ')
        [ -n "$entry" ] || continue
        case "$entry" in
            *-*)
                low=${entry%%-*}
                high=${entry#*-}
                is_port "$low" && is_port "$high" && [ "$low" -le "$high" ] ||
                    die "$option: '$entry' is not a port range"
                echo "$low:$high"
                ;;
            *)
                is_port "$entry" || die "$option: '$entry' is not a port"
                echo "$entry"
                ;;
        esac
    done
    IFS=$old_ifs
}

subnet_list() {
    old_ifs=$IFS
    IFS=,
    for entry in $1; do
        entry=$(printf '%s' "$entry" | tr -d ' ')
        [ -n "$entry" ] || continue
        address=${entry%/*}
        bits=32
        [ "$address" = "$entry" ] || bits=${entry#*/}
        case "$bits" in '' | *[!0-9]*) die "--subnets-to-ignore: '$entry' is not an IPv4 CIDR" ;; esac
        [ "$bits" -le 32 ] || die "--subnets-to-ignore: '$entry' is not an IPv4 CIDR"
        IFS=.
        # shellcheck disable=SC2086
        set -- $address
        IFS=,
        [ $# -eq 4 ] || die "--subnets-to-ignore: '$entry' is not an IPv4 CIDR"
        for octet in "$@"; do
            case "$octet" in '' | *[!0-9]*) die "--subnets-to-ignore: '$entry' is not an IPv4 CIDR" ;; esac
            [ "${#octet}" -le 3 ] && [ "$octet" -le 255 ] || die "--subnets-to-ignore: '$entry' is not an IPv4 CIDR"
        done
        echo "$address/$bits"
    done
    IFS=$old_ifs
}

inbound_port=''
outbound_port=''
proxy_uid=''
inbound_ignore=''
outbound_ignore=''
subnets=''
dry_run=false

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run)
            dry_run=true
            shift
            continue
            ;;
        --incoming-proxy-port | --outgoing-proxy-port | --proxy-uid | --inbound-ports-to-ignore | \
            --outbound-ports-to-ignore | --subnets-to-ignore)
            [ $# -ge 2 ] || die "$1 needs a value"
            ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$1'" ;;
    esac
    case "$1" in
        --incoming-proxy-port) inbound_port=$2 ;;
        --outgoing-proxy-port) outbound_port=$2 ;;
        --proxy-uid) proxy_uid=$2 ;;
        --inbound-ports-to-ignore) inbound_ignore=$2 ;;
        --outbound-ports-to-ignore) outbound_ignore=$2 ;;
        --subnets-to-ignore) subnets=$2 ;;
    esac
    shift 2
done

is_port "$inbound_port" || die "--incoming-proxy-port: '$inbound_port' is not a port"
is_port "$outbound_port" || die "--outgoing-proxy-port: '$outbound_port' is not a port"
case "$proxy_uid" in '' | *[!0-9]*) die "--proxy-uid: '$proxy_uid' is not a user ID" ;; esac
[ "$proxy_uid" -gt 0 ] || die "--proxy-uid: the proxy must not run as root (UID 0)"

inbound_ports=$(port_list --inbound-ports-to-ignore "$inbound_ignore")
outbound_ports=$(port_list --outbound-ports-to-ignore "$outbound_ignore")
subnet_cidrs=$(subnet_list "$subnets")

rules() {
    echo '*nat'
    echo ':PROXY_INIT_REDIRECT - [0:0]'
    echo ':PROXY_INIT_OUTPUT - [0:0]'
    for port in $inbound_ports; do
        echo "-A PROXY_INIT_REDIRECT -p tcp -m tcp --dport $port -m comment --comment \"proxy-init/ignore-port-$port\" -j RETURN"
    done
    for cidr in $subnet_cidrs; do
        echo "-A PROXY_INIT_REDIRECT -s $cidr -m comment --comment \"proxy-init/ignore-subnet-$cidr\" -j RETURN"
    done
    echo "-A PROXY_INIT_REDIRECT -p tcp -m comment --comment \"proxy-init/redirect-all-incoming-to-proxy-port\" -j REDIRECT --to-ports $inbound_port"
    echo '-A PREROUTING -m comment --comment "proxy-init/install-proxy-init-prerouting" -j PROXY_INIT_REDIRECT'
    echo "-A PROXY_INIT_OUTPUT -m owner --uid-owner $proxy_uid -m comment --comment \"proxy-init/ignore-proxy-user-id\" -j RETURN"
    echo '-A PROXY_INIT_OUTPUT -o lo -m comment --comment "proxy-init/ignore-loopback" -j RETURN'
    for port in $outbound_ports; do
        echo "-A PROXY_INIT_OUTPUT -p tcp -m tcp --dport $port -m comment --comment \"proxy-init/ignore-port-$port\" -j RETURN"
    done
    for cidr in $subnet_cidrs; do
        echo "-A PROXY_INIT_OUTPUT -d $cidr -m comment --comment \"proxy-init/ignore-subnet-$cidr\" -j RETURN"
    done
    echo "-A PROXY_INIT_OUTPUT -p tcp -m comment --comment \"proxy-init/redirect-all-outgoing-to-proxy-port\" -j REDIRECT --to-ports $outbound_port"
    echo '-A OUTPUT -m comment --comment "proxy-init/install-proxy-init-output" -j PROXY_INIT_OUTPUT'
    echo 'COMMIT'
}

if [ "$dry_run" = true ]; then
    rules
    exit 0
fi

pick() {
    if [ -n "${1:-}" ]; then echo "$1"; elif command -v "$2" >/dev/null 2>&1; then echo "$2"; else echo "$3"; fi
}
restore=$(pick "${IPTABLES_RESTORE:-}" iptables-nft-restore iptables-restore)
save=$(pick "${IPTABLES_SAVE:-}" iptables-nft-save iptables-save)

# An init container runs again when the pod restarts but the network namespace (and the rules) survive; adding
# the jump rules a second time would be harmless but noisy, so an installed set is left alone.
if "$save" -t nat 2>/dev/null | grep -q '^:PROXY_INIT_REDIRECT '; then
    echo "apus-proxy-init: rules already installed; nothing to do"
    exit 0
fi
rules | "$restore" --noflush -w 5
echo "apus-proxy-init: redirecting inbound TCP to :$inbound_port and outbound TCP to :$outbound_port" \
    "(proxy UID $proxy_uid exempt)"
"$save" -t nat
