// Command fedcluster runs every role of a fedcluster federated-learning
// cluster: the scheduler, the servers, a launcher for local servers on a
// port range, the stop command, simulated devices and the demo.
package main

import (
	"fmt"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(name string, args []string) int
}

var commands = map[string]command{
	"scheduler": {"run the scheduler (membership, iteration control, management REST API)", runScheduler},
	"server":    {"run one server (device HTTP, aggregation, model store)", runServer},
	"launch":    {"start the scheduler or N local servers in the background, as the seed's run_sched/run_server scripts", runLaunch},
	"stop":      {"stop every process of the cluster on this host (--scheduler_port)", runStop},
	"devices":   {"run simulated devices (training LeNet on MNIST, or load) until the job finishes", runDevices},
	"demo":      {"a local cluster training LeNet on MNIST with 8 simulated devices", runDemo},
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: fedcluster <command> [flags]\n\ncommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\n'fedcluster <command> --help' lists a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "fedcluster: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(c.run(name, os.Args[2:]))
}
