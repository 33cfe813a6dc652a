// Command check validates Kubernetes manifests offline: it strictly decodes
// every document of a multi-document YAML file (the output of `kubectl
// kustomize deploy/k8s`) into the typed API struct of its kind, so unknown
// or misspelt fields and malformed values (quantities, ports) fail. It is a
// separate module so that the main module does not depend on k8s.io/api.
//
//	kubectl kustomize deploy/k8s > /tmp/k8s.yaml
//	(cd deploy/k8s/check && go run . /tmp/k8s.yaml)
package main

import (
	"bytes"
	"fmt"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: check FILE.yaml")
		os.Exit(2)
	}
	b, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bad := 0
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil || head.Kind == "" {
			fmt.Println("INVALID: cannot read kind:", err)
			bad++
			continue
		}
		var obj any
		switch head.Kind {
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "Service":
			obj = &corev1.Service{}
		case "PersistentVolumeClaim":
			obj = &corev1.PersistentVolumeClaim{}
		case "Deployment":
			obj = &appsv1.Deployment{}
		case "StatefulSet":
			obj = &appsv1.StatefulSet{}
		default:
			fmt.Println("INVALID: kind not known to this checker:", head.Kind)
			bad++
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			fmt.Printf("INVALID %s/%s: %v\n", head.Kind, head.Metadata.Name, err)
			bad++
			continue
		}
		fmt.Printf("ok %s/%s\n", head.Kind, head.Metadata.Name)
	}
	if bad > 0 {
		os.Exit(1)
	}
}
