"""The gslb configuration file (TOML): data centers, health checks, services and geo settings.

gslb.config.load reads it into the frozen dataclasses of gslb.config.model; every problem in the
file is gathered and reported at once as ``file:line: key.path: message`` in one ``ConfigError``,
located by gslb.config.locate.  Nothing here imports the steering, the prober or any I/O library.

File format
===========

One TOML file (``zones/gslb.toml`` by default) with four tables, all optional::

    [geo]
    no_ecs = "resolver"   # clients whose resolver sends no EDNS Client Subnet are located by
                          # the resolver's address ("resolver", the default), or all placed at
                          # geo.default ("default")
    private = "default"   # private, loopback and documentation addresses go to geo.default;
                          # "database" looks them up in the GeoIP database instead (an
                          # internal MMDB that places your own networks)
    default = { country = "US", continent = "NA", latitude = 39.04, longitude = -77.49 }
                          # where clients go that the database cannot place (private addresses,
                          # unknown networks); without it such clients have no coordinates and
                          # "nearest" answers in member order

    [[geo.override]]      # CIDR overrides win over the GeoIP database; the most specific wins
    network = "192.0.2.0/24"
    country = "JP"
    continent = "AS"
    latitude = 35.68
    longitude = 139.69
    # also: subdivision = "13" (ISO 3166-2 without the country), city = "Tokyo"

    [checks.web]          # a named health check; data centers refer to it by name
    kind = "http"         # "http" | "https" | "tcp"                                   (required)
    port = 8080           # 1-65535; default 80 for http, 443 for https, required for tcp
    path = "/health"      # http(s) only; must start with "/"; default "/"
    method = "GET"        # http(s) only; "GET" or "HEAD"
    expect_status = [200] # http(s) only; statuses that count as up; default [200]
    body_contains = "ok"  # http(s) only; the body must contain this text (not with HEAD)
    host = "www.example.com"   # http(s) only; Host header (and TLS server name for https)
    verify_tls = true     # http(s) only; verify the server certificate (default true)
    ca_file = "ca.pem"    # http(s) only; CA bundle, relative to this file; must exist
    follow_redirects = false   # http(s) only
    interval = 1.0        # seconds between probes (> 0)
    timeout = 0.8         # seconds a probe may take (> 0 and < interval: an error otherwise)
    fall = 2              # consecutive failures that mark an up data center down (>= 1)
    rise = 3              # consecutive successes that mark a down data center up (>= 1)
    jitter = 0.1          # spread probe start times by up to this fraction of interval (0-1)

    [datacenters.us]      # names: letters, digits, "_", "-", "." (starting with a letter/digit)
    vips = ["127.0.1.1", "2001:db8:1::1"]   # the addresses answered (IPv4 and/or IPv6; required)
    latitude = 39.04      # -90..90; latitude and longitude come together; needed by
    longitude = -77.49    # "nearest" (-180..180)
    country = "US"        # ISO 3166-1 alpha-2 (informational)
    continent = "NA"      # AF AN AS EU NA OC SA (informational)
    weight = 1.0          # share for the "weighted" policy (> 0; default 1)
    bias_km = 0.0         # "nearest": added to the distance (negative = prefer; default 0)
    check = "web"         # a name in [checks]; without a check the data center is always up
    probe = "127.0.1.1"   # the address probed, when it differs from the VIP (NAT, internal
                          # address); default the first IPv4 VIP, else the first IPv6 VIP

    [services."www.example.com."]   # the owner name, quoted; stored lower-case and absolute
    datacenters = ["us", "eu", "ap"]   # members (required, no duplicates)
    policy = "nearest"    # "nearest" (default) | "geo" | "failover" | "weighted"
    answers = 1           # how many data centers' VIPs to answer (1..number of members)
    ttl = 30              # answer TTL in seconds (0..2147483647; default 30)
    ttl_degraded = 10     # TTL while any member is down (<= ttl; default min(ttl, 10))
    all_down = "open"     # when every member is down: "open" (answer as if all were up;
                          # the default), "fallback" (answer the fallback addresses),
                          # "nodata" (an empty answer), "servfail"
    fallback = ["127.0.9.1"]   # addresses for all_down = "fallback" (IPv4 and/or IPv6)
    # policy "geo" only:
    map = [
      { match = "continent:EU", order = ["eu", "us"] },
      { match = ["country:JP", "country:KR"], order = ["ap", "us"] },
      { match = "subdivision:US-CA", order = ["us", "ap"] },
      { match = "cidr:203.0.113.0/24", order = ["ap"] },
    ]
    default = ["us", "eu", "ap"]   # order for clients no rule matches (default: datacenters)
    # policy "failover" only:
    order = ["us", "eu"]  # first healthy wins (default: datacenters; members left out follow
                          # in datacenters order)

    [cluster]             # several instances, one verdict (gslb.cluster.votes); without it each decides alone
    name = "example"      # required; keys in etcd live under /gslb/<name>/
    etcd = ["http://127.0.10.1:2379"]   # required; the etcd members' client URLs
    down_quorum = 0.5     # down when more than this share of live instances see it down (0-0.99;
                          # 0: any one instance)
    lease = 5             # seconds an instance's observations outlive it (2-3600, an integer)

    [cookies]             # DNS Cookies (RFC 7873, RFC 9018 server cookies); on without the table
    enabled = true        # false: COOKIE options ignored (no server cookies)
    secret_file = "cookie.key"   # 32 hex digits a line, relative to this file; the first makes
                          # cookies, further lines (a rotation's old or next secret) are accepted
                          # too; without it a random secret per process start
    large_answers_need_cookie = false   # true: UDP replies over large_answer_size to a query
    large_answer_size = 512             # without a valid server cookie get TC (retry over TCP)

    [rrl]                 # response rate limiting, per client network and kind; off without it
    rate = 20             # replies a second per network and kind (answer, NXDOMAIN, error, referral)
    window = 1            # seconds of replies a quiet network may send at once (burst rate * window)
    slip = 2              # every slip-th limited reply goes out truncated (TC); 0: drop all
    exempt = ["192.0.2.0/24"]   # networks never limited
    log_only = false      # true: count and log what would be limited, limit nothing
    ipv4_prefix = 24      # the network a client counts in (1-32; 1-128 for ipv6_prefix = 56)

Policies (see gslb.steering.policy): "nearest" ranks members by great-circle distance from the client
plus bias_km; "geo" takes the order of the most specific matching map rule (precedence: cidr,
longest prefix first, then subdivision, country, continent; file order does not matter);
"failover" walks the order; "weighted" draws members at random in proportion to weight.
Each answers the VIPs of the first ``answers`` healthy data centers.

A ``cidr:`` rule matches a client whose geo network (the GeoIP database record's prefix, or a
[[geo.override]] network) lies inside the rule's CIDR; to steer a network finer than the
database knows it, add a [[geo.override]] for it.
"""
