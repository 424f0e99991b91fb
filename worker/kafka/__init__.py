"""Kafka I/O: topics, the output producer and the state-topic reader. Imports nothing of TensorFlow."""
