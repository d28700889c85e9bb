//! kube-sim: a Kubernetes API server simulator (placeholder until issue #2 lands).
