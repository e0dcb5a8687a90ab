# A Perl program with a slow start-up, then the file you edit.
#
#   cargo xtask run -- perl examples/perl/main.pl   # edit examples/perl/greeting.pl
use strict;
use warnings;
use FindBin;
use Time::HiRes qw(time);

my $started = time;
# The start-up: modules, and data built once (a word index).
use Data::Dumper ();
use Getopt::Long ();
use JSON::PP ();
use List::Util qw(sum);
use POSIX ();
use Storable ();
my %index;
for my $i (1 .. 2_000_000) {
    push @{ $index{ $i % 997 } }, $i;
}
$| = 1;    # what is printed before the checkpoint is printed once
printf "start-up: %.2f s\n", time - $started;

require "$FindBin::Bin/greeting.pl";    # the file you edit
print greeting(scalar keys %index), "\n";
