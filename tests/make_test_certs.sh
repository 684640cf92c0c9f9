#!/bin/sh
# Makes a throwaway PKI for the TLS tests with Debian's openssl, into DIR:
#   ca.pem ca.key                 the test CA
#   server.pem server.key         server cert, SAN IP:127.0.0.1 + DNS:localhost, serial 0x1001
#   server2.pem server2.key       the same names, a new key, serial 0x1002 (rotation)
#   client-a.pem client-a.key     client, URI SAN spiffe://attnserve.test/client-a, CN client-a
#   client-b.pem client-b.key     client, URI SAN spiffe://attnserve.test/client-b, CN client-b
#   client-expired.pem/.key       client-a's names, signed by the CA, expired in 2020
#   other-ca.pem other-ca.key     an unrelated CA
#   client-other.pem/.key         client-a's names, signed by the other CA
#   server-other.pem/.key         server names, signed by the other CA
# Usage: make_test_certs.sh DIR   (DIR is created; existing files are replaced)
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"
export OPENSSL_CONF=/dev/null  # ignore the system config

ca() {  # NAME CN
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1.key" -out "$1.pem" -days 2 -subj "/O=attnserve test/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

leaf() {  # NAME CA SERIAL SAN EKU CN
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "/O=attnserve test/CN=$6" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$4" "$5" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -set_serial "$3" -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "attnserve test CA"
ca other-ca "attnserve other CA"
leaf server ca 0x1001 "IP:127.0.0.1,DNS:localhost" serverAuth localhost
leaf server2 ca 0x1002 "IP:127.0.0.1,DNS:localhost" serverAuth localhost
leaf server-other other-ca 0x2001 "IP:127.0.0.1,DNS:localhost" serverAuth localhost
leaf client-a ca 0x3001 "URI:spiffe://attnserve.test/client-a" clientAuth client-a
leaf client-b ca 0x3002 "URI:spiffe://attnserve.test/client-b" clientAuth client-b
leaf client-other other-ca 0x3003 "URI:spiffe://attnserve.test/client-a" clientAuth client-a

# Expired: `openssl ca` is the one that takes explicit validity dates.
mkdir -p expired-ca
: > expired-ca/index.txt
cat > expired-ca/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = expired-ca/index.txt
new_certs_dir = expired-ca
serial = expired-ca/serial
certificate = ca.pem
private_key = ca.key
default_md = sha256
policy = any
unique_subject = no
copy_extensions = copy
[any]
commonName = supplied
organizationName = optional
CNF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout client-expired.key -out client-expired.csr -subj "/O=attnserve test/CN=client-a" \
  -addext subjectAltName=URI:spiffe://attnserve.test/client-a \
  -addext extendedKeyUsage=clientAuth 2>/dev/null
echo 3004 > expired-ca/serial
openssl ca -batch -config expired-ca/ca.cnf -in client-expired.csr -out client-expired.pem \
  -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>/dev/null
rm -rf client-expired.csr expired-ca
chmod 600 ./*.key
