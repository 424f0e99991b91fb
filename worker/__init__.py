"""lstm-stream-worker: serve recurrent Keras models over Kafka, one step per event."""
