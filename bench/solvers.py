from diffusio.bench.solvers import main

main()
