// Command cnmd is cnm's agent: one per host, it owns a cnm.Controller and serves the REST API
// of package api (the handler is api/server's) on a Unix socket, or on TCP with mutual TLS
// only. cnmctl is its command-line client.
//
//	cnmd [--data-dir /var/lib/cnm] [--run-dir /run/cnm] [--host unix:///run/cnm/cnm.sock] [--group G]
//	     [--host tcp://ADDR --tlscacert CA --tlscert CERT --tlskey KEY]
//	     [--store boltdb:///var/lib/cnm/local.db] [--global-store etcd://...|consul://...] [--hostname H]
//	     [--advertise-addr IP] [--gossip-port 7946] [--join HOST:PORT]... [--gossip-key-file FILE] [--vtep ADDR|IFACE]
//
// The socket is made mode 0660, owned by root and --group. A tcp:// host without the three TLS
// files is refused: the API changes the host's network, so every client must present a
// certificate the CA signed. The data directory is locked (DATA-DIR/cnmd.lock): a second cnmd
// on it refuses to start and says which process holds it.
//
// On SIGTERM or SIGINT cnmd stops taking requests, lets the ones in flight finish (at most
// --shutdown-timeout), ends the event streams, closes the Controller (networks and sandboxes
// stay in the kernel and the store) and removes the socket; the next start restores
// everything. Logs are structured (log/slog) on standard error.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/server"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/kvurl"
	"github.com/spf13/cobra"
)

// options are cnmd's flags.
type options struct {
	dataDir, runDir, host, group   string
	tlsCA, tlsCert, tlsKey         string
	store, globalStore, hostname   string
	advertise, gossipKeyFile, vtep string
	gossipPort                     int
	join                           []string
	noIPTables                     bool
	logLevel, logFormat            string
	shutdownTimeout                time.Duration
}

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "cnmd:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "cnmd",
		Short:         "cnm's agent: container networks on this host, served over a REST API",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/cnm", "state: the store and the sandboxes' hosts and resolv.conf files")
	f.StringVar(&o.runDir, "run-dir", "/run/cnm", "the sandboxes' namespace mounts")
	f.StringVarP(&o.host, "host", "H", api.DefaultHost, "where to listen: unix:///path or tcp://addr:port (tcp needs mutual TLS)")
	f.StringVar(&o.group, "group", "", "group owning the unix socket (mode 0660); default root")
	f.StringVar(&o.tlsCA, "tlscacert", "", "CA certificate (PEM) that signs the clients' certificates (tcp://)")
	f.StringVar(&o.tlsCert, "tlscert", "", "server certificate (PEM) (tcp://)")
	f.StringVar(&o.tlsKey, "tlskey", "", "server key (PEM) (tcp://)")
	f.StringVar(&o.store, "store", "", "local store URL; default boltdb://DATA-DIR/local.db")
	f.StringVar(&o.globalStore, "global-store", "", "global store shared by hosts: etcd://HOSTS/prefix or consul://HOST/prefix")
	f.StringVar(&o.hostname, "hostname", "", "this host's name in the cluster; default the machine's")
	f.StringVar(&o.advertise, "advertise-addr", "", "gossip: the IP address peers reach this host at")
	f.IntVar(&o.gossipPort, "gossip-port", gossip.DefaultPort, "gossip: TCP and UDP port")
	f.StringSliceVar(&o.join, "join", nil, "gossip: HOST:PORT of members to join (repeatable)")
	f.StringVar(&o.gossipKeyFile, "gossip-key-file", "", "gossip: file holding the cluster's key, 16, 24 or 32 bytes in hex; starts the gossip plane")
	f.StringVar(&o.vtep, "vtep", "", "overlay: this host's underlay address or interface (default: the default route's interface)")
	f.BoolVar(&o.noIPTables, "no-iptables", false, "the bridge driver writes no iptables rules (Docker's --iptables=false)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for the requests in flight")
	return cmd
}

func newLogger(o options) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	ho := &slog.HandlerOptions{Level: lvl}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, ho)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
}

// checkHost checks --host and its TLS flags: a tcp:// host needs all three TLS files, a
// unix:// one none. run calls it before it makes or opens anything.
func checkHost(o options) error {
	scheme, _, err := api.ParseHost(o.host)
	if err != nil {
		return err
	}
	tlsGiven := o.tlsCA != "" || o.tlsCert != "" || o.tlsKey != ""
	switch {
	case scheme == "tcp" && (o.tlsCA == "" || o.tlsCert == "" || o.tlsKey == ""):
		return fmt.Errorf("refusing to listen on %s without mutual TLS: give --tlscacert, --tlscert and --tlskey (the API changes this host's network; every client must present a certificate the CA signed)", o.host)
	case scheme == "unix" && tlsGiven:
		return fmt.Errorf("--tlscacert, --tlscert and --tlskey are for a tcp:// host; %s is guarded by its file mode", o.host)
	}
	return nil
}

// listener listens on --host (checked by checkHost): TCP with mutual TLS, or a unix socket
// of mode 0660 owned by root and --group. It returns the socket's path for a unix host.
func listener(o options) (net.Listener, string, error) {
	scheme, addr, err := api.ParseHost(o.host)
	if err != nil {
		return nil, "", err
	}
	if scheme == "tcp" {
		cfg, err := serverTLS(o)
		if err != nil {
			return nil, "", err
		}
		ln, err := tls.Listen("tcp", addr, cfg)
		return ln, "", err
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
		return nil, "", err
	}
	if c, err := net.Dial("unix", addr); err == nil {
		c.Close()
		return nil, "", fmt.Errorf("%s is served by another process already", o.host)
	}
	if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, "", err
	}
	gid := 0
	if o.group != "" {
		g, err := user.LookupGroup(o.group)
		if err != nil {
			ln.Close()
			return nil, "", fmt.Errorf("--group %q: %w", o.group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			ln.Close()
			return nil, "", fmt.Errorf("--group %q: gid %q: %w", o.group, g.Gid, err)
		}
	}
	if err := os.Chown(addr, 0, gid); err != nil && o.group != "" {
		ln.Close()
		return nil, "", fmt.Errorf("socket owner: %w", err)
	}
	if err := os.Chmod(addr, 0o660); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("socket mode: %w", err)
	}
	return ln, addr, nil
}

// serverTLS is the server side of mutual TLS: clients must present a certificate the CA signed.
func serverTLS(o options) (*tls.Config, error) {
	ca, err := os.ReadFile(o.tlsCA)
	if err != nil {
		return nil, fmt.Errorf("--tlscacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("--tlscacert %s: no PEM certificate in it", o.tlsCA)
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tlscert/--tlskey: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// gossipConfig returns the gossip plane's configuration, or nil without --gossip-key-file.
func gossipConfig(o options) (*gossip.Config, error) {
	if o.gossipKeyFile == "" {
		if o.advertise != "" || len(o.join) > 0 {
			return nil, errors.New("--advertise-addr and --join need --gossip-key-file (gossip is always encrypted)")
		}
		return nil, nil
	}
	b, err := os.ReadFile(o.gossipKeyFile)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key-file: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("--gossip-key-file %s: want 16, 24 or 32 bytes in hex: %w", o.gossipKeyFile, err)
	}
	cfg := &gossip.Config{Keys: [][]byte{key}, BindPort: o.gossipPort, KeyringFile: filepath.Join(o.dataDir, "gossip-keyring.json")}
	if o.advertise != "" {
		a, err := netip.ParseAddr(o.advertise)
		if err != nil {
			return nil, fmt.Errorf("--advertise-addr %q: not an IP address", o.advertise)
		}
		cfg.AdvertiseAddr = a
	}
	return cfg, nil
}

func run(ctx context.Context, o options) (err error) {
	log, err := newLogger(o)
	if err != nil {
		return err
	}
	gcfg, err := gossipConfig(o)
	if err != nil {
		return err
	}
	if err := checkHost(o); err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()

	if o.store == "" {
		o.store = "boltdb://" + filepath.Join(o.dataDir, "local.db")
	}
	store, err := kvurl.Open(ctx, o.store, kvurl.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("--store: %w", err)
	}
	defer store.Close()
	cfg := cnm.Config{DataDir: o.dataDir, RunDir: o.runDir, Store: store, Logger: log, Hostname: o.hostname,
		DisableIPTables: o.noIPTables, Gossip: gcfg, GossipPeers: o.join}
	if o.vtep != "" {
		if a, err := netip.ParseAddr(o.vtep); err == nil {
			cfg.Overlay.VTEP = a
		} else {
			cfg.Overlay.Interface = o.vtep
		}
	}
	var global kvstore.Store
	if o.globalStore != "" {
		if global, err = kvurl.Open(ctx, o.globalStore, kvurl.Options{Logger: log}); err != nil {
			return fmt.Errorf("--global-store: %w", err)
		}
		defer global.Close()
		cfg.GlobalStore = global
	}
	ln, sock, err := listener(o)
	if err != nil {
		return err
	}
	defer func() {
		if sock != "" {
			if rerr := os.Remove(sock); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
	}()
	defer ln.Close()

	c, err := cnm.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	for _, r := range c.Repairs() {
		log.Warn("repaired at start", "object", r.Object, "action", r.Action, "reason", r.Reason)
	}
	scfg := server.Config{Controller: c, Logger: log, StoreCheck: storeCheck(store)}
	if global != nil {
		scfg.GlobalStoreCheck = func(ctx context.Context) error { _, err := c.Hosts(ctx); return err }
	}
	srv, err := server.New(scfg)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("cnmd ready", "host", o.host, "data-dir", o.dataDir, "drivers", strings.Join(c.Drivers(), ","), "networks", len(c.Networks()), "sandboxes", len(c.Sandboxes()))

	select {
	case <-ctx.Done():
		log.Info("shutting down: finishing the requests in flight", "timeout", o.shutdownTimeout)
	case err := <-serveErr:
		srv.Close()
		return fmt.Errorf("serve: %w", err)
	}
	srv.Close() // ends the event streams, which would keep Shutdown waiting
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("shutdown: requests still in flight were cut", "err", err)
	}
	<-serveErr
	log.Info("stopped")
	return nil
}

// storeCheck reads a key that does not exist: the store answers "not found" when it works.
func storeCheck(s kvstore.Store) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := s.Get(ctx, "cnm/v1/health-check")
		if err == nil || errors.Is(err, kvstore.ErrKeyNotFound) {
			return nil
		}
		return err
	}
}
