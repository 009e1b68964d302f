// A minimal crictl for the lab's `cri-tools` package. cri-tools is in no Debian release and
// nothing else can be fetched here, but kubeadm needs `crictl` on nodes that run containerd (its
// preflight checks and image pulls, `kubeadm reset`) and `kind load` asks it too. This program is
// built inside Debian's kubernetes 1.20 source tree by tests/lab/build-kube.sh and talks CRI to
// the runtime through the kubelet's own client (pkg/kubelet/cri/remote); it implements the
// commands and flags those callers use, with crictl's output shapes and exit codes:
//
//	crictl [-r|--runtime-endpoint ENDPOINT] info|version|images [-q]|inspecti IMAGE|pull IMAGE|
//	       pods [-q]|ps [-a] [-q]|stopp ID...|rmp ID...|rmi IMAGE...
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
	"k8s.io/kubernetes/pkg/kubelet/cri/remote"
)

const timeout = 2 * time.Minute

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func printJSON(v interface{}) {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(out))
}

func main() {
	endpoint := os.Getenv("CONTAINER_RUNTIME_ENDPOINT")
	if endpoint == "" {
		endpoint = "unix:///run/containerd/containerd.sock"
	}
	args := os.Args[1:]
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch {
		case args[0] == "-r" || args[0] == "--runtime-endpoint" || args[0] == "-i" || args[0] == "--image-endpoint":
			if len(args) < 2 {
				fail("%s needs a value", args[0])
			}
			endpoint = args[1]
			args = args[2:]
		case strings.HasPrefix(args[0], "--runtime-endpoint="):
			endpoint = strings.TrimPrefix(args[0], "--runtime-endpoint=")
			args = args[1:]
		default:
			fail("unknown flag %s", args[0])
		}
	}
	if len(args) == 0 {
		fail("usage: crictl [-r ENDPOINT] info|version|images|inspecti|pull|pods|ps|stopp|rmp|rmi ...")
	}
	if !strings.Contains(endpoint, "://") {
		endpoint = "unix://" + endpoint
	}
	cmd, rest := args[0], args[1:]
	quiet, all := false, false
	var operands []string
	for _, a := range rest {
		switch a {
		case "-q", "--quiet":
			quiet = true
		case "-a", "--all":
			all = true
		default:
			operands = append(operands, a)
		}
	}
	rs, err := remote.NewRemoteRuntimeService(endpoint, timeout)
	if err != nil {
		fail("connect: %v", err)
	}
	is, err := remote.NewRemoteImageService(endpoint, timeout)
	if err != nil {
		fail("connect: %v", err)
	}
	switch cmd {
	case "info":
		st, err := rs.Status()
		if err != nil {
			fail("getting status of runtime: %v", err)
		}
		printJSON(map[string]interface{}{"status": st})
	case "version":
		v, err := rs.Version("v1alpha2")
		if err != nil {
			fail("getting the runtime version: %v", err)
		}
		fmt.Printf("Version:  0.1.0\nRuntimeName:  %s\nRuntimeVersion:  %s\nRuntimeApiVersion:  %s\n",
			v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	case "images":
		imgs, err := is.ListImages(nil)
		if err != nil {
			fail("listing images: %v", err)
		}
		for _, i := range imgs {
			if quiet {
				fmt.Println(i.Id)
			} else {
				fmt.Println(strings.Join(i.RepoTags, " "), i.Id)
			}
		}
	case "inspecti":
		for _, name := range operands {
			img, err := is.ImageStatus(&runtimeapi.ImageSpec{Image: name})
			if err != nil {
				fail("image status for %q request: %v", name, err)
			}
			if img == nil {
				fail("no such image %q present", name)
			}
			printJSON(map[string]interface{}{"status": img})
		}
	case "pull":
		for _, name := range operands {
			ref, err := is.PullImage(&runtimeapi.ImageSpec{Image: name}, nil, nil)
			if err != nil {
				fail("pulling image: %v", err)
			}
			fmt.Printf("Image is up to date for %s\n", ref)
		}
	case "rmi":
		for _, name := range operands {
			if err := is.RemoveImage(&runtimeapi.ImageSpec{Image: name}); err != nil {
				fail("removing image %q: %v", name, err)
			}
		}
	case "pods":
		pods, err := rs.ListPodSandbox(nil)
		if err != nil {
			fail("listing pod sandboxes: %v", err)
		}
		for _, p := range pods {
			if quiet {
				fmt.Println(p.Id)
			} else {
				fmt.Println(p.Id, p.State, p.Metadata.Namespace+"/"+p.Metadata.Name)
			}
		}
	case "ps":
		var filter *runtimeapi.ContainerFilter
		if !all {
			filter = &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}
		}
		cs, err := rs.ListContainers(filter)
		if err != nil {
			fail("listing containers: %v", err)
		}
		for _, c := range cs {
			if quiet {
				fmt.Println(c.Id)
			} else {
				fmt.Println(c.Id, c.State, c.Metadata.Name, c.PodSandboxId)
			}
		}
	case "stopp":
		for _, id := range operands {
			if err := rs.StopPodSandbox(id); err != nil {
				fail("stopping the pod sandbox %q: %v", id, err)
			}
			fmt.Printf("Stopped sandbox %s\n", id)
		}
	case "rmp":
		for _, id := range operands {
			if err := rs.RemovePodSandbox(id); err != nil {
				fail("removing the pod sandbox %q: %v", id, err)
			}
			fmt.Printf("Removed sandbox %s\n", id)
		}
	default:
		fail("crictl (ksctl lab): command %q is not implemented", cmd)
	}
}
