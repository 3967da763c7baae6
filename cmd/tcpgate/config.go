package main

import (
	"bytes"
	"fmt"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// newConfigCmd groups the commands about the config file.
func newConfigCmd(c *client) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "config",
		Short:   "Work with the gateway's config file",
		Example: "  tcpgate config export > tcpgate.yaml",
	}
	export := &cobra.Command{
		Use:   "export",
		Short: "Print the listeners and outbound connections made through the API as a config file",
		Long: "export prints, as YAML that `tcpgate serve --config` reads, every listener and\n" +
			"outbound connection made through the API (not those of the config file), each\n" +
			"as the request that makes it again: a listener on the port it is bound to.\n" +
			"Inline TLS private keys are left out: put them in files and name them with\n" +
			"key_file.",
		Example: "  tcpgate config export > tcpgate.yaml\n  tcpgate serve --config tcpgate.yaml",
		Args:    cobra.NoArgs,
		RunE: c.run(func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
			if err != nil {
				return err
			}
			out, err := configYAML(resp.GetConfig())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		}),
	}
	c.addFlags(export)
	cmd.AddCommand(export)
	return cmd
}

// configYAML is cfg as a config file: its protojson (the API's JSON
// names) in YAML's block style.
func configYAML(cfg *tcpgatev1.Config) ([]byte, error) {
	j, err := protojson.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encoding the config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(j, &doc); err != nil {
		return nil, fmt.Errorf("encoding the config as YAML: %w", err)
	}
	blockStyle(&doc)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encoding the config as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding the config as YAML: %w", err)
	}
	return out.Bytes(), nil
}

// blockStyle undoes the flow style and quoting of JSON, where YAML does
// not need them.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}
