//! Defaults that serde needs as functions, and the commented example printed by `genba config example`.

pub(crate) fn slack_rate() -> f64 {
    1.0
}
pub(crate) fn slack_burst() -> u32 {
    3
}
pub(crate) fn slack_coalesce() -> usize {
    20
}
pub(crate) fn slack_timeout() -> u64 {
    10
}
pub(crate) fn slack_max_backoff() -> u64 {
    300
}

/// Printed by `genba config example`; a test checks that it loads.
pub const EXAMPLE_CONFIG: &str = r##"# genba.toml: every key is optional; the values shown are the defaults unless marked "example".
# On the Pi this file is /etc/genba/genba.toml; secrets live in a separate file with mode 600.

# data_dir = "/var/lib/genba"            # SQLite journal, run/endpoints.json (default ./genba-data)
# secrets_file = "/var/lib/genba/secrets.toml"   # default <data_dir>/secrets.toml

[mqtt]
listen = "127.0.0.1:1883"              # one port for MQTT 3.1.1 and MQTT 5; use "0.0.0.0:1883" on the LAN
# tls_listen = "0.0.0.0:8883"            # MQTT over TLS, certificate from [tls]
# ws_listen = "0.0.0.0:8083"             # MQTT over WebSocket (browsers), path any
# wss_listen = "0.0.0.0:8084"            # MQTT over WebSocket and TLS
# allow_anonymous = true                 # unset: anonymous only on loopback with no users
max_payload = 262144                     # bytes per PUBLISH
max_connections = 1000
max_queued_messages = 1000               # QoS 1/2 messages kept per session for a client that is away or slow
max_keep_alive = 60                      # seconds; MQTT 5 clients asking more (or 0) are told this
max_session_expiry_secs = 604800         # longest MQTT 5 session expiry granted (7 days)
# connect = "127.0.0.1:1883"             # how genba's own roles reach the broker

# [[mqtt.users]]                         # example; hash from `genba passwd`
# name = "sensor"
# password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
# [[mqtt.users]]                         # example: a device account; it may publish devices/fridge-1/#
# name = "fridge-1"                      #   and subscribe devices/fridge-1/commands (and .../commands/#),
# password_hash = "$argon2id$..."        #   plus what [[mqtt.acl]] grants it; nothing else
# device = "fridge-1"

# Access rules (like Mosquitto's acl_file). Without any, every client may do everything
# (device accounts excepted). Once a rule grants something (publish or subscribe), each other
# client may do exactly what its rules grant: those with its `user` and those without `user`
# (these apply to anonymous clients too). Patterns are topic filters; a level may be %u (user
# name; never matches an anonymous client) or %c (client id). A subscription is allowed when a
# subscribe pattern covers the whole filter (a/# covers a/+/b; a/+ does not cover a/#).
# deny_publish / deny_subscribe win over every grant (a deny_subscribe pattern refuses any
# filter that overlaps it: # overlaps test/nosubscribe). With deny rules only, everything not
# denied stays allowed. + and # never match $-topics ($SYS/...); $share/{group}/{filter} is
# checked as {filter}.
# [[mqtt.acl]]                           # example: user sensor reads everything, writes notify/alert
# user = "sensor"
# subscribe = ["#"]
# publish = ["notify/#", "alert/#"]
# [[mqtt.acl]]                           # example: every client, anonymous included
# publish = ["clients/%c/#"]
# subscribe = ["notify/#", "clients/%c/#"]
# deny_subscribe = ["test/nosubscribe"]

[http]
listen = "127.0.0.1:8080"
# tls_listen = "0.0.0.0:443"             # HTTPS, certificate from [tls]
default_topic = "notify/slack"
max_body_bytes = 65536                   # larger bodies get 413
max_message_bytes = 16384
max_topic_bytes = 256
request_timeout_secs = 10
max_pending = 4096                       # beyond this, 503 + Retry-After
api_key_sha256 = []                      # X-API-Key values, as printed by `genba passwd --api-key`
# [[http.users]]                         # example: HTTP Basic auth
# name = "phone"
# password_hash = "$argon2id$..."

[store]
retention_hours = 168                    # prune journal rows older than this once every sink passed them
max_batch = 512                          # group commit size
max_share_percent = 50                   # the database may use this share of the data file system;
                                         # above it the oldest rows every sink passed go, whatever
                                         # their age, then new data is refused (docs/storage.md)
# max_mb = 2048                          # a fixed budget instead of the share
low_space_percent = 10                   # alarms/genba/storage below this much free space
check_secs = 60                          # how often space is checked

[console]                                # the web console at http://<host>/; users are [[http.users]]
admins = ["admin"]                       # may do everything (the first-boot admin is "admin")
operators = []                           # may acknowledge alarms and send commands; others view
session_minutes = 720
# board_ports = ["/dev/ttyUSB0"]         # the serial ports "Add a thermometer" may write a board on;
                                         #   unset: the ESP32 boards on this machine's USB (vendor 303a)

[devices]
# auto_provision = "authenticated"       # "off" | "authenticated" | "all"; unset: "all" only for the
                                         #   loopback trial (anonymous MQTT on 127.0.0.1, no users)
raw_days = 30                            # raw points and records per device
rollup_days = 731                        # per-minute and per-hour min/max/avg/count

# [[rules]]                              # example: a fridge warmer than 8 °C for 5 minutes
# name = "fridge-warm"                   # alarms go to the journal as alarms/{device}/{rule}
# tag = "fridge"                         # devices with this tag (or device = "fridge-1")
# stream = "temperature"                 # a stream name, or "*"
# condition = "above"                    # above below > >= < <= = != silent rate
# threshold = 8.0
# for_secs = 300
# hysteresis = 0.5                       # clears below 7.5
# escalate_after_minutes = 30            # unacknowledged that long: escalated once
# severity = "critical"                  # or "warning"
# [[rules]]
# name = "probe-silent"
# stream = "*"
# condition = "silent"
# silent_minutes = 15

# [[slack.webhooks]]                     # example; its URL is `ops = "https://hooks.slack.com/services/..."`
# name = "ops"                           #   under [slack] in the secrets file
# filters = ["notify/#", "alert/#"]
# rate_per_sec = 1.0                     # Slack allows about one message per second per webhook
# burst = 3
# max_coalesce = 20                      # messages folded into one post when a backlog builds
# timeout_secs = 10
# max_backoff_secs = 300

# Delivery sinks (docs/sinks.md): kind = "slack" | "webhook" | "line" | "email"; secret parts
# under [sinks.NAME] in the secrets file (url, signing_secret, channel_access_token, username,
# password). Examples:
# [[sinks]]
# name = "erp"
# kind = "webhook"                       # JSON POST, X-Genba-Signature (HMAC-SHA256)
# filters = ["alarms/#"]
# [[sinks]]
# name = "shop"
# kind = "line"                          # LINE Messaging API push
# filters = ["alarms/#"]
# to = ["U0123456789abcdef0123456789abcdef"]
# template = "{topic.1}: {payload}"
# [[sinks]]
# name = "manager"
# kind = "email"
# filters = ["alarms/#"]
# to = ["manager@example.com"]
# [sinks.smtp]
# host = "smtp.example.com"
# security = "starttls"                  # port 587; "tls" = 465
# from = "Genba <genba@example.com>"

# [upstream]                             # example: forward to the company's MQTT cluster (docs/fleet.md)
# host = "mqtt.example.com"              # port 8883, TLS; topics go to sites/{site}/...
# site = "osaka-1"
# filters = ["alarms/#", "devices/+/telemetry", "notify/#"]
# commands = true                        # take sites/{site}/devices/+/commands down to the devices
# ca_file = "/var/lib/genba/upstream/ca.pem"
# client_cert = "/var/lib/genba/upstream/osaka-1.crt"
# client_key = "/var/lib/genba/upstream/osaka-1.key"

[telemetry]                              # POST /api/telemetry (X-API-Key from `genba keys add`)
rate_per_sec = 5.0                       # per API key and per source address; beyond: 429 + Retry-After
burst = 20
publish = true                           # also publish accepted batches on devices/{id}/telemetry

[exment]                                 # `genba exment`: HACCP check records to Exment
# base_url = "https://exment.example.com" # example; client_id, client_secret, api_key go under
table = "haccp_temp"                     #   [exment] in the secrets file
scope = "value_read value_write"
slot_minutes = 30                        # one record per device, probe and slot
aggregation = "nearest"                  # nearest | min | max | avg
grace_minutes = 5                        # send a slot this long after it ended
max_rows_per_request = 100               # Exment's bulk limit
max_requests_per_minute = 60             # Exment's rate limit; at most 90% of it is used
timeout_secs = 15
max_backoff_secs = 300
credentials_backoff_secs = 600           # after Exment refused the credentials
time_zone = "UTC"                        # the site's IANA zone, e.g. "Asia/Tokyo": check_slot's wall time
[exment.columns]
unique_key = "unique_key"                # needs a search index in Exment
check_slot = "check_slot"
temperature = "temp_c"
device = "device_id"
sensor = "sensor_id"

[recorder]                               # `genba recorder`: journal an external broker's messages
# broker = "192.0.2.10:1883"             # example; password under [recorder] in the secrets file
filters = ["#"]
# username = "genba"
client_id = "genba-recorder"             # persistent session: QoS 1 messages wait while it is away

[discovery]                              # mDNS: announce _genba._tcp so devices find this appliance
enabled = true                           #   (docs/discovery.md); a failure to announce is a warning
# instance = "genba"                     # the name devices and browsers see; default: the host name
# interfaces = ["eth0", "wlan0"]         # default: those of the listen addresses (all for 0.0.0.0)

[tls]                                    # the certificate of [mqtt] tls_listen and [http] tls_listen
# cert = "/etc/genba/server.pem"         # unset with key: a local CA made in DATA_DIR/tls (its
# key = "/etc/genba/server.key"          #   certificate for devices: http://<host>/ca.pem)
names = ["genba.local", "localhost"]     # the local certificate's names (+ host name, 127.0.0.1)
# client_ca = "/etc/genba/clients.pem"   # clients must also present a certificate from this CA
"##;
