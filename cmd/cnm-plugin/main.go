// Command cnm-plugin serves cnm's bridge driver and its default IPAM to Docker as a network
// and IPAM plugin (Docker's plugin protocol, package drivers/remote/server), on the Unix
// socket DIR/NAME.sock where Docker's discovery finds it:
//
//	cnm-plugin [--name cnm] [--dir /run/docker/plugins] [--no-iptables] [--firewall iptables|nftables|auto]
//
// Then, on the same host: docker network create -d cnm --ipam-driver cnm --subnet 10.20.0.0/24 n.
// The bridges, veths and firewall rules are made in the namespace cnm-plugin runs in, which
// must be Docker's (the host's). Join leaves the container end of each veth in that namespace
// and Docker moves it into the container, as with any plugin.
//
// State (networks, endpoints, pools) is kept in memory: after a restart the plugin knows
// nothing of what Docker created through it. On SIGTERM or SIGINT it stops taking calls,
// finishes those in flight, closes the driver and removes the socket. Logs are structured
// (log/slog) on standard error.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/ipam"
	"github.com/spf13/cobra"
)

func main() {
	var name, dir, firewall string
	var noIPTables, debug bool
	cmd := &cobra.Command{
		Use:           "cnm-plugin",
		Short:         "Serve cnm's bridge driver and IPAM as a Docker network plugin",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, log, name, dir, bridge.Config{Logger: log, DisableIPTables: noIPTables, Firewall: bridge.Firewall(firewall)})
		},
	}
	cmd.Flags().StringVar(&name, "name", "cnm", "the plugin's name: the driver and IPAM driver name Docker uses")
	cmd.Flags().StringVar(&dir, "dir", "/run/docker/plugins", "the directory of the plugin's socket")
	cmd.Flags().StringVar(&firewall, "firewall", "", `the bridge's firewall backend: "iptables", "nftables" or "auto" ("" is iptables)`)
	cmd.Flags().BoolVar(&noIPTables, "no-iptables", false, "write no firewall rules (Docker's --iptables=false)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log every failed call")
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "cnm-plugin:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, name, dir string, bcfg bridge.Config) (err error) {
	drv, err := bridge.New(bcfg)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := drv.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{Driver: drv, IPAM: alloc, Logger: log})
	if err != nil {
		return err
	}
	l, err := server.Listen(dir, name)
	if err != nil {
		return err
	}
	log.Info("serving", "plugin", name, "socket", l.Addr().String())
	return srv.Serve(ctx, l)
}
