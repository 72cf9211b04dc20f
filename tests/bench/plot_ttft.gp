# TTFT vs prompt length from bench_offload --plot-data (columns: len recompute_ms host_ms
# gpu_hit_ms), log-log: recompute (no cache), host-tier hit, full GPU prefix hit, with the
# DESIGN.md host-tier targets (10K <= 30 ms, 100K <= 270 ms) marked when the data reaches 10K.
#   gnuplot -e "data='bench-out/ttft.dat'; out='bench-out/ttft.png'" tests/bench/plot_ttft.gp
# Optional: title='...' (default: the data file's first comment line).
if (!exists("data")) data = 'ttft.dat'
if (!exists("out")) out = 'ttft.png'
if (!exists("title")) title = system("sed -n '1s/^# *//p' '" . data . "'")

set terminal pngcairo size 1000,650 font ",11" noenhanced
set output out
set title title
set logscale xy
set xlabel "prompt tokens"
set ylabel "time to first token (ms)"
set format x "%.0s%c"
set grid xtics ytics mxtics mytics lc rgb "#dddddd"
set key top left box opaque
set datafile commentschars "#"

$targets << EOD
10000 30 "10K <= 30 ms"
100000 270 "100K <= 270 ms"
EOD

stats data using 1 nooutput
t = STATS_max >= 10000 ? 1 : 0

plot data using 1:2 with linespoints lw 2 pt 7 lc rgb "#c0392b" title "recompute (no cache)", \
     data using 1:3 with linespoints lw 2 pt 5 lc rgb "#2471a3" title "host-tier hit", \
     data using 1:4 with linespoints lw 2 pt 9 lc rgb "#229954" title "GPU prefix hit", \
     $targets using (t ? $1 : NaN):2 with points pt 3 ps 2.5 lw 2 lc rgb "#7d3c98" \
         title (t ? "host-tier target" : ""), \
     $targets using (t ? $1 : NaN):2:3 with labels right offset -1.5,0.8 tc rgb "#7d3c98" \
         notitle
