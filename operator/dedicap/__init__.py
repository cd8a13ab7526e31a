"""dedicap: dedicated GPU capacity for model serving on Kubernetes."""
