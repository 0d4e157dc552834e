"""Several instances: observations and votes shared through etcd."""
