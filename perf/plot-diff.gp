# plot-diff.gp: output size vs throughput of each diff tool/mode, one panel
# per case, one labelled point per row (log-log). Called by perf/bench-diff:
#   gnuplot -e "datafile='x.dat'; outfile='x.png'; cases='disk mem'; \
#               ranges='x0 x1 y0 y1 x0 x1 y0 y1'" perf/plot-diff.gp
# datafile: one block per case, in the order of `cases`, blocks separated by
# two blank lines; columns: "label" throughput_MB/s output_MB group label_x
# label_y (group 0 = handoff-engine, 1 = baseline tool, 2 = placeholder).
# ranges (optional): xmin xmax ymin ymax per case; label positions are
# computed by bench-diff for a 470x400-pixel plot area per panel.

if (!exists("datafile") || !exists("outfile")) {
    print "plot-diff.gp: set datafile and outfile with -e"
    exit status 1
}
if (!exists("cases")) cases = "disk mem"
if (!exists("ranges")) ranges = ""
n = words(cases)

set terminal pngcairo size (560 * n), 520 font ",10" noenhanced
set output outfile

set linetype 1 lc rgb "#1f6fb4" pt 7 ps 1.3
set linetype 2 lc rgb "#d62728" pt 5 ps 1.3

set logscale xy
set grid xtics ytics mxtics mytics lc rgb "#e4e4e4"
set xlabel "throughput (input MB / wall s)"
set ylabel "output size (MB)"
# 1-2-5 tics on both log axes
set xtics ()
set ytics ()
do for [e = -3:5] { do for [m in "1 2 5"] {
    set xtics add (sprintf("%g", real(m) * 10**e) real(m) * 10**e)
    set ytics add (sprintf("%g", real(m) * 10**e) real(m) * 10**e)
} }
set mxtics 10
set mytics 10
set key bottom left box opaque
set lmargin at screen 0
set multiplot layout 1, n title "handoff diff: output size vs throughput (lower right is better)"
do for [i = 1:n] {
    set title sprintf("case %s", word(cases, i))
    if (words(ranges) >= 4 * i) {
        set xrange [real(word(ranges, 4*i-3)):real(word(ranges, 4*i-2))]
        set yrange [real(word(ranges, 4*i-1)):real(word(ranges, 4*i))]
    } else {
        set autoscale xy
    }
    set lmargin 9
    set rmargin 2
    plot datafile index (i - 1) using 2:3:($5 - $2):($6 - $3) with vectors nohead lc rgb "#b0b0b0" notitle, \
         '' index (i - 1) using 2:($4 == 0 ? $3 : NaN) with points lt 1 title "handoff-engine", \
         '' index (i - 1) using 2:($4 == 1 ? $3 : NaN) with points lt 2 title "baseline tools", \
         '' index (i - 1) using 5:6:1 with labels left font ",8" notitle
}
unset multiplot
