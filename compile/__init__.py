"""Front end, model variants, tuning and build: model file -> Relax module -> built artifact."""
