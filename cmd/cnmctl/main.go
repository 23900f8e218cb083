// Command cnmctl is the command-line client of cnmd, with the verbs Docker users know:
//
//	cnmctl network create [-d DRIVER] [--subnet] [--gateway] [--ip-range] [--aux-address] [--ipv6] [--internal] [--attachable] [-o K=V]... [--label K=V]... NAME
//	cnmctl network ls [--filter driver=|name=|label=|id=|scope=] [--format TEMPLATE] [-q] [--no-trunc]
//	cnmctl network inspect [--format TEMPLATE] NAME...
//	cnmctl network connect [--ip] [--ip6] [--alias]... NETWORK SANDBOX
//	cnmctl network disconnect [-f] NETWORK SANDBOX
//	cnmctl network rm NAME...
//	cnmctl network prune [-f]
//	cnmctl sandbox create [--net NETWORK|none|host|container:NAME] [-p SPEC]... [-P --expose PORT...] [--hostname] [--dns]... NAME
//	cnmctl sandbox ls [-q] [--format TEMPLATE]
//	cnmctl sandbox inspect [--format TEMPLATE] NAME...
//	cnmctl sandbox rm [-f] NAME...
//	cnmctl exec NAME -- CMD [ARG...]
//
// Sandboxes stand for containers. --host (or CNM_HOST) says where cnmd listens, unix:// by
// default; a tcp:// host needs --tlscacert, --tlscert and --tlskey (mutual TLS). --format
// takes Go templates as docker's does, with json, join, index, range, lower, upper, split
// and title. On failure cnmctl prints the server's message and exits with status 1.
//
// cnmctl imports only package api and its client: none of cnm's core.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := root().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnmctl:", err)
		os.Exit(1)
	}
}

// globals are the flags every command takes.
type globals struct {
	host, tlsCA, tlsCert, tlsKey string
}

func (g *globals) client() (*client.Client, error) {
	cfg := client.Config{Host: g.host}
	if g.tlsCA != "" || g.tlsCert != "" || g.tlsKey != "" {
		t, err := client.TLSConfig(g.tlsCA, g.tlsCert, g.tlsKey)
		if err != nil {
			return nil, err
		}
		cfg.TLS = t
	}
	return client.New(cfg)
}

func root() *cobra.Command {
	g := &globals{}
	cmd := &cobra.Command{
		Use:           "cnmctl",
		Short:         "Container networks through cnmd, with docker's network verbs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	host := os.Getenv("CNM_HOST")
	if host == "" {
		host = api.DefaultHost
	}
	pf := cmd.PersistentFlags()
	pf.StringVarP(&g.host, "host", "H", host, "cnmd's address: unix:///path or tcp://host:port (env CNM_HOST)")
	pf.StringVar(&g.tlsCA, "tlscacert", "", "CA certificate (PEM) that signed cnmd's certificate (tcp://)")
	pf.StringVar(&g.tlsCert, "tlscert", "", "client certificate (PEM) (tcp://)")
	pf.StringVar(&g.tlsKey, "tlskey", "", "client key (PEM) (tcp://)")
	cmd.AddCommand(networkCommand(g), sandboxCommand(g), execCommand(g))
	return cmd
}

// withClient runs f with a client of cnmd, closed afterwards.
func withClient(cmd *cobra.Command, g *globals, f func(context.Context, *client.Client) error) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	return f(cmd.Context(), cl)
}

// completeNames completes network (or sandbox) names from cnmd.
func completeNames(g *globals, sandboxes bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var names []string
		withClient(cmd, g, func(ctx context.Context, cl *client.Client) error {
			if sandboxes {
				sbs, err := cl.SandboxList(ctx)
				for _, s := range sbs {
					names = append(names, s.Name)
				}
				return err
			}
			nets, err := cl.NetworkList(ctx)
			for _, n := range nets {
				names = append(names, n.Name)
			}
			return err
		})
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}
