# bench_longdoc.py's rounds: mean and p99 TTFT per round, host tier on vs off.
# gnuplot /root/out/bench/longdoc.csv's script; writes /root/out/bench/longdoc.png.
set terminal pngcairo size 1100,520 font ",10"
set output "/root/out/bench/longdoc.png"
set datafile separator ","
set title "bench_longdoc: 24 documents x 8192 tokens (+32-token question, 16 generated), 4 clients, GPU pool 2048 blocks of 16 tokens (~4.0 documents), host tier 32.0 GiB when on; cuda, llama-3.1-8b" noenhanced font ",9"
set multiplot layout 1,2
set xlabel "round (1 = first visit, then revisits)"
set ylabel "TTFT (ms)"
set logscale y
set grid
set key top right
set xtics 1
plot "/root/out/bench/longdoc.csv" using ($2 == 0 ? $3 : 1/0):6 with linespoints lw 2 title "mean, tier off", \
     "/root/out/bench/longdoc.csv" using ($2 == 0 ? $3 : 1/0):8 with linespoints dt 2 title "p99, tier off", \
     "/root/out/bench/longdoc.csv" using ($2 > 0 ? $3 : 1/0):6 with linespoints lw 2 title "mean, tier on", \
     "/root/out/bench/longdoc.csv" using ($2 > 0 ? $3 : 1/0):8 with linespoints dt 2 title "p99, tier on"
unset logscale y
set ylabel "seconds per round"
plot "/root/out/bench/longdoc.csv" using ($2 == 0 ? $3 : 1/0):9 with linespoints lw 2 title "tier off", \
     "/root/out/bench/longdoc.csv" using ($2 > 0 ? $3 : 1/0):9 with linespoints lw 2 title "tier on"
unset multiplot
