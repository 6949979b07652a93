// cnidriver: call a CNI plugin through libcni, the library Multus and containerd use.
//
// Built by tests/test_libcni.py against the libcni this module pins (go.mod, from the Go module
// proxy), so the tests see the plugin exactly as a libcni-based runtime does: libcni finds the
// binary in -path, injects name, cniVersion, prevResult, runtimeConfig and, for GC, the valid
// attachments, execs it, parses the result and keeps its result cache in -cache.
//
//	cnidriver -verb ADD|DEL|CHECK|STATUS|GC|VERSION|VALIDATE|INFO -conf FILE [-id CID]
//	          [-netns PATH] [-ifname IF] [-args 'K=V;K2=V2'] [-cap '{"mac": "..."}']
//	          [-valid '[{"containerID": "...", "ifname": "..."}]'] -path DIR -cache DIR
//
// -conf is a .conflist (has "plugins": the *NetworkList calls, as containerd makes them) or a
// single plugin config (the *Network calls, as Multus makes them for a NAD's config).
// Success: exit 0, the result JSON (ADD, VERSION, VALIDATE, INFO) or nothing (DEL, CHECK) on
// stdout. STATUS and GC take a single config as the list of that one plugin. Failure: exit 1, {"code", "msg", "details", "error"} on stdout; code is the plugin's
// error code, 0 when libcni itself failed (msg then holds libcni's message).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

type options struct {
	verb, conf, id, netns, ifname, args, caps, valid, path, cache string
}

// network is a config file loaded either way, so each verb is written once.
type network struct {
	list   *libcni.NetworkConfigList
	single *libcni.NetworkConfig
}

func load(file string) (*network, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if _, isList := probe["plugins"]; isList {
		list, err := libcni.ConfListFromBytes(raw)
		return &network{list: list}, err
	}
	single, err := libcni.ConfFromBytes(raw)
	return &network{single: single}, err
}

// asList: STATUS and GC exist only for lists; a single config is a list of one, as libcni makes it.
func (n *network) asList() (*libcni.NetworkConfigList, error) {
	if n.list != nil {
		return n.list, nil
	}
	return libcni.ConfListFromConf(n.single)
}

func (n *network) pluginType() string {
	if n.single != nil {
		return n.single.Network.Type
	}
	return n.list.Plugins[0].Network.Type
}

func runtimeConf(o options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: o.id, NetNS: o.netns, IfName: o.ifname}
	for _, element := range strings.Split(o.args, ";") {
		if element == "" {
			continue
		}
		kv := strings.SplitN(element, "=", 2)
		if len(kv) == 1 {
			kv = append(kv, "")
		}
		rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
	}
	if o.caps != "" {
		if err := json.Unmarshal([]byte(o.caps), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("-cap: %w", err)
		}
	}
	return rt, nil
}

// info says what this libcni can do, so the tests can skip what it lacks instead of guessing.
func info() map[string]interface{} {
	return map[string]interface{}{
		"supportedVersions": version.All.SupportedVersions(),
		"current":           version.Current(),
		"verbs":             []string{"ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "VALIDATE"},
		"cniVersions":       readsCNIVersions(),
	}
}

// readsCNIVersions: does this libcni pick a version from a list's `cniVersions` (spec 1.1.0)?
func readsCNIVersions() bool {
	probe := []byte(`{"name": "probe", "cniVersions": ["1.0.0"], "plugins": [{"type": "probe"}]}`)
	list, err := libcni.ConfListFromBytes(probe)
	return err == nil && list.CNIVersion != ""
}

func run(ctx context.Context, o options) (interface{}, error) {
	if o.verb == "INFO" {
		return info(), nil
	}
	net, err := load(o.conf)
	if err != nil {
		return nil, err
	}
	rt, err := runtimeConf(o)
	if err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(o.path, ":"), o.cache, nil)
	switch o.verb {
	case "ADD":
		if net.list != nil {
			return cni.AddNetworkList(ctx, net.list, rt)
		}
		return cni.AddNetwork(ctx, net.single, rt)
	case "DEL":
		if net.list != nil {
			return nil, cni.DelNetworkList(ctx, net.list, rt)
		}
		return nil, cni.DelNetwork(ctx, net.single, rt)
	case "CHECK":
		if net.list != nil {
			return nil, cni.CheckNetworkList(ctx, net.list, rt)
		}
		return nil, cni.CheckNetwork(ctx, net.single, rt)
	case "STATUS":
		list, err := net.asList()
		if err != nil {
			return nil, err
		}
		return nil, cni.GetStatusNetworkList(ctx, list)
	case "GC":
		list, err := net.asList()
		if err != nil {
			return nil, err
		}
		args := &libcni.GCArgs{}
		if o.valid != "" {
			if err := json.Unmarshal([]byte(o.valid), &args.ValidAttachments); err != nil {
				return nil, fmt.Errorf("-valid: %w", err)
			}
		}
		return nil, cni.GCNetworkList(ctx, list, args)
	case "VERSION":
		vi, err := cni.GetVersionInfo(ctx, net.pluginType())
		if err != nil {
			return nil, err
		}
		return map[string]interface{}{"supportedVersions": vi.SupportedVersions()}, nil
	case "VALIDATE":
		var caps []string
		if net.list != nil {
			caps, err = cni.ValidateNetworkList(ctx, net.list)
		} else {
			caps, err = cni.ValidateNetwork(ctx, net.single)
		}
		return map[string]interface{}{"capabilities": caps}, err
	}
	return nil, fmt.Errorf("unknown verb %q", o.verb)
}

func failure(err error) map[string]interface{} {
	out := map[string]interface{}{"code": 0, "msg": err.Error(), "error": err.Error()}
	var plugin *types.Error
	if errors.As(err, &plugin) {
		out["code"], out["msg"], out["details"] = plugin.Code, plugin.Msg, plugin.Details
	}
	return out
}

func main() {
	var o options
	flag.StringVar(&o.verb, "verb", "", "ADD, DEL, CHECK, STATUS, GC, VERSION, VALIDATE or INFO")
	flag.StringVar(&o.conf, "conf", "", "network config list (.conflist) or single plugin config")
	flag.StringVar(&o.id, "id", "", "container id")
	flag.StringVar(&o.netns, "netns", "", "network namespace path")
	flag.StringVar(&o.ifname, "ifname", "", "interface name inside the container")
	flag.StringVar(&o.args, "args", "", "CNI_ARGS, K=V;K2=V2")
	flag.StringVar(&o.caps, "cap", "", "capability args as JSON, e.g. {\"mac\": \"02:00:00:00:00:01\"}")
	flag.StringVar(&o.valid, "valid", "", "GC: the valid attachments, [{\"containerID\": ..., \"ifname\": ...}]")
	flag.StringVar(&o.path, "path", "", "CNI_PATH, directories separated by ':'")
	flag.StringVar(&o.cache, "cache", "", "libcni cache dir")
	flag.Parse()

	out, err := run(context.Background(), o)
	if err != nil {
		out = failure(err)
	}
	enc := json.NewEncoder(os.Stdout)
	if out != nil {
		if encErr := enc.Encode(out); encErr != nil && err == nil {
			err = encErr
		}
	}
	if err != nil {
		os.Exit(1)
	}
}
