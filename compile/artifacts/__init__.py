"""Build and link: the pipeline from a model file to a shipped folder (library, model copy, manifest), the
toolchains, the isolated child process, the runtime bundle."""
