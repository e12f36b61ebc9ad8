"""Build and run the pipeline as a whole: packaging for deployment, local end-to-end runs."""
