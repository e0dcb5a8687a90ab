sub greeting {
    my ($buckets) = @_;
    return "hello from greeting.pl, $buckets buckets";
}
1;
