# Sourced by start.sh when KAFKA_SECURITY=sasl: the settings of the SASL listeners.
# Env: KAFKA_SASL_ADMIN_PASSWORD (admin-secret): password of `admin`, the super user the broker
# itself and administrators use; KAFKA_SASL_USERS ("alice:alice-secret"): space-separated
# name:password pairs, each usable with PLAIN and with SCRAM-SHA-512. Names and passwords are
# letters, digits, '-', '_' and '.' only (they are written into JAAS and SCRAM arguments).
# SCRAM credentials are stored in the KRaft metadata when the storage is formatted, so a data
# directory keeps the users it was first started with. ACLs are on (StandardAuthorizer,
# nothing allowed unless granted); `admin` and the loopback-only PLAINTEXT controller listener
# (principal ANONYMOUS, which the node itself uses) are super users.
# KAFKA_SSL_PORT: also a SASL_SSL listener there, whose self-signed certificate (for 127.0.0.1
# and localhost) is made once into $KAFKA_DIR/tls; clients trust $KAFKA_DIR/tls/ca.pem. A test
# broker's certificate: its keystore password is fixed.

sasl_users() {
  local pair
  for pair in "admin:${KAFKA_SASL_ADMIN_PASSWORD:-admin-secret}" ${KAFKA_SASL_USERS:-alice:alice-secret}; do
    if [[ ! "$pair" =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$ ]]; then
      echo "start.sh: SASL user '${pair%%:*}': expected name:password of letters, digits, '.', '_', '-'" >&2
      return 1
    fi
    echo "$pair"
  done
}

# the mechanisms of each listener named (sasl_plaintext, sasl_ssl), then the broker-wide SASL and ACL settings
sasl_properties() {
  local name users pair plain_users=""
  users="$(sasl_users)"
  for pair in $users; do plain_users+=" user_${pair%%:*}=\"${pair#*:}\""; done
  for name in "$@"; do
    cat <<PROPS
listener.name.$name.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${KAFKA_SASL_ADMIN_PASSWORD:-admin-secret}"$plain_users;
listener.name.$name.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
  done
  cat <<PROPS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
PROPS
}

tls_properties() {
  local tls="$1" pass=test-broker-keystore
  if [[ ! -f "$tls/broker.p12" ]]; then
    mkdir -p "$tls"
    keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname CN=localhost \
        -ext SAN=IP:127.0.0.1,DNS:localhost -storetype PKCS12 -keystore "$tls/broker.p12" \
        -storepass "$pass" -keypass "$pass" >"$tls/keytool.log" 2>&1 \
      && keytool -exportcert -rfc -alias broker -keystore "$tls/broker.p12" -storepass "$pass" \
        -file "$tls/ca.pem" >>"$tls/keytool.log" 2>&1 \
      || { echo "start.sh: making the TLS certificate failed, see $tls/keytool.log" >&2; return 1; }
  fi
  cat <<PROPS
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$pass
ssl.key.password=$pass
PROPS
}

scram_credentials() {
  local users pair
  users="$(sasl_users)"
  for pair in $users; do echo "SCRAM-SHA-512=[name=${pair%%:*},password=${pair#*:}]"; done
}
