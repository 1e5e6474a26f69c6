"""Model generation: the variants' layer lists, synthetic weights and calibration, the TFLite writer, inputs."""
