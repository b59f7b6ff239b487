# plot-handoff.gp: timeline of one method's handoffs (perf/handoff-bench
# calls it once per method). Two panels over "seconds since the migration
# started": top, bytes on the wire (source veth, cumulative) and the queue
# (what the sender still has to send); bottom, wire throughput per 0.5 s.
# Thin dotted lines mark iteration starts, a dashed line the source STOP.
#   gnuplot -e "files='a.dat b.dat'; labels='x/run1 y/run1'; outfile='o.png'; \
#               ttl='title'; stops='12.5 none'; marks1='0.1 30.2'; marks2='none'" \
#           perf/plot-handoff.gp
# Each data file has two blocks separated by two blank lines:
#   index 0: t_s wire_MB throughput_Mbit     index 1: t_s queue_MB
# labels must not contain spaces; "none" stands for no mark.

if (!exists("files") || !exists("outfile")) {
    print "plot-handoff.gp: set files and outfile with -e"
    exit status 1
}
if (!exists("labels")) labels = files
if (!exists("ttl")) ttl = "handoff timeline"
if (!exists("stops")) stops = ""
n = words(files)
colors = "#1f6fb4 #d62728 #2ca02c #9467bd #ff7f0e #8c564b #e377c2 #7f7f7f"
col(i) = word(colors, (i - 1) % 8 + 1)

set terminal pngcairo size 1100, 780 font ",10" noenhanced
set output outfile
set grid xtics ytics lc rgb "#e4e4e4"
set key top left box opaque
set xlabel "seconds since the migration started"
set lmargin 10
set rmargin 3

# iteration marks (dotted) and STOP (dashed) of entry i, as arrows
do for [i = 1:n] {
    mv = sprintf("marks%d", i)
    if (exists(mv)) {
        m = value(mv)
        do for [w in m] {
            if (w ne "none") {
                set arrow from real(w), graph 0 to real(w), graph 1 nohead lc rgb col(i) dt 3 lw 1
            }
        }
    }
    if (words(stops) >= i && word(stops, i) ne "none") {
        set arrow from real(word(stops, i)), graph 0 to real(word(stops, i)), graph 1 nohead lc rgb col(i) dt 2 lw 2
    }
}

set multiplot layout 2, 1 title ttl
set ylabel "MB"
set title "wire bytes (source veth, solid) and queue (dashed); dotted: iteration starts, dashed vertical: source STOP"
plot for [i = 1:n] word(files, i) index 0 using 1:2 with lines lw 2 lc rgb col(i) title word(labels, i)." wire", \
     for [i = 1:n] word(files, i) index 1 using 1:2 with lines lw 1.5 dt 2 lc rgb col(i) title word(labels, i)." queue"
set ylabel "Mbit/s"
set title "wire throughput (source veth, per 0.5 s)"
set yrange [0:*]
plot for [i = 1:n] word(files, i) index 0 using 1:3 with steps lw 1.5 lc rgb col(i) title word(labels, i)
unset multiplot
