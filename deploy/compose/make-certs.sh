#!/bin/sh
# Certificates for the compose demo, made once into $1: the ALB's self-signed
# certificate (alb.pem, alb.key), the router's from its own CA (router-ca.pem,
# router.pem, router.key) and a client's from the CA the postgresql route
# trusts (clients-ca.pem, client.pem, client.key).
set -eu
d=$1
[ -f "$d/client.key" ] && exit 0
cd "$d"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=alb.demo \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout alb.key -out alb.pem
for ca in router-ca clients-ca; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj "/CN=$ca" \
        -keyout "$ca.key" -out "$ca.pem"
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=router.demo -keyout router.key -out router.csr
printf 'subjectAltName=DNS:router.demo\n' > router.ext
openssl x509 -req -in router.csr -CA router-ca.pem -CAkey router-ca.key -CAcreateserial -days 365 -extfile router.ext -out router.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=demo-user -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA clients-ca.pem -CAkey clients-ca.key -CAcreateserial -days 365 -out client.pem
rm -f ./*.csr ./*.ext ./*.srl
chmod 644 ./*.pem ./*.key
