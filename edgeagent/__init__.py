"""edgeagent: the runtime for wearable-health edge hubs.

Ingests wearable streams (BLE, serial), cuts them into multimodal windows,
detects anomalies with ONNX on the box, learns locally and takes part in
federated rounds over MQTT.
"""

__version__ = "0.1.0"
