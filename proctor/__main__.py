from proctor.cli import main

# Guarded: the identity embedder's spawned worker imports the main module again (as __mp_main__).
if __name__ == "__main__":
    raise SystemExit(main())
