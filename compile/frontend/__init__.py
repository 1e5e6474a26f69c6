"""The front end: reading and checking TFLite files, TFLite -> Relax (TVM's converters, and our integer int8
converter with TFLite's fixed-point arithmetic), the float64 reference pass and the shape check."""
