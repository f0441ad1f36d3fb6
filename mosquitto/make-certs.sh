#!/bin/sh
# Make a dedicated device CA, a broker certificate and one client certificate
# per name, for Mosquitto's client-certificate authentication.
#
#   usage: make-certs.sh OUTDIR [CLIENT_NAME...]
#
# OUTDIR gets ca.crt/ca.key (the device CA), server.crt/server.key (the
# broker) and <name>.crt/<name>.key for each client. The client's name is its
# certificate CN, which the broker turns into its MQTT username
# (use_identity_as_username), which the ACL turns into its rights: a device id
# (`truck-7`) may publish under devices/truck-7/#, `fieldcast-bridge` reads
# devices/#. So a name must be a valid device id, [A-Za-z0-9_.-]{1,64}: a CN
# with `/`, `+` or `#` would widen what `pattern write devices/%u/#` allows.
#
# Idempotent: an existing CA, server or client key pair in OUTDIR is kept, so
# the script can be re-run to add clients to an existing CA. EC P-256 keys
# (PKCS#8 PEM) keep it fast. No prompts.
#
# Environment:
#   FIELDCAST_CERT_SAN   subjectAltName of the broker certificate
#                        (default DNS:localhost,IP:127.0.0.1,IP:::1); add the
#                        broker's public DNS name for a real deployment.
#   FIELDCAST_CERT_DAYS  validity of server/client certificates (default 825)
#   FIELDCAST_CA_DAYS    validity of the CA (default 3650)
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [CLIENT_NAME...]" >&2
    exit 2
fi
out=$1
shift

san=${FIELDCAST_CERT_SAN:-DNS:localhost,IP:127.0.0.1,IP:::1}
days=${FIELDCAST_CERT_DAYS:-825}
ca_days=${FIELDCAST_CA_DAYS:-3650}

# Check every name before writing anything.
for name in "$@"; do
    if ! printf '%s' "$name" | grep -Eq '^[A-Za-z0-9_.-]{1,64}$'; then
        echo "$0: bad client name '$name': must match [A-Za-z0-9_.-]{1,64}" >&2
        exit 2
    fi
    case $name in
        ca | server)
            echo "$0: '$name' is reserved (its files would overwrite the $name's)" >&2
            exit 2
            ;;
    esac
done

mkdir -p "$out"
umask 077
cnf=$(mktemp)
trap 'rm -f "$cnf" "$out"/*.csr' EXIT
cat >"$cnf" <<CNF
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

genkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# $1 = file stem, $2 = CN, $3 = extension section
issue() {
    if [ -s "$out/$1.crt" ] && [ -s "$out/$1.key" ] &&
        openssl verify -CAfile "$out/ca.crt" "$out/$1.crt" >/dev/null 2>&1; then
        return 0
    fi
    genkey "$out/$1.key"
    openssl req -new -key "$out/$1.key" -subj "/CN=$2" -config "$cnf" -out "$out/$1.csr"
    openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
        -extfile "$cnf" -extensions "$3" -out "$out/$1.crt" 2>/dev/null
    rm -f "$out/$1.csr"
}

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
    genkey "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -subj "/CN=Fieldcast device CA" \
        -config "$cnf" -extensions ca_ext -days "$ca_days" -sha256 -out "$out/ca.crt"
fi

issue server localhost server_ext
for name in "$@"; do
    issue "$name" "$name" client_ext
done

# Certificates are public; keys stay owner-only (umask 077 above). Mosquitto
# 2.0 reads server.key after dropping to its own user, so an installed copy
# must be readable by that user's group (README.md); ca.key never goes on the
# broker at all.
chmod 644 "$out"/*.crt
